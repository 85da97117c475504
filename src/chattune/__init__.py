"""chattune: fine-tune, evaluate, serve and keep improving a chatbot built on a pretrained LM.

The package is layered and imports only point downward::

    data  <-  model  <-  train  <-  cli

Heavy libraries (torch, transformers, peft) are imported inside the modules that need them,
so ``chattune --help`` and the data commands start instantly.
"""

__version__ = "0.1.0"
