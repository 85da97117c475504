"""chattune: fine-tune, evaluate, serve and keep improving a chatbot built on a pretrained LM.

The package is layered and imports only point downward (``tests/test_layers.py`` checks
every import against this order; docs/design.md draws it)::

    errors < data < config, runs < model < backends, knowledge < chat < evaluate < serve < cli
                                     model < train < cli

Heavy libraries (torch, transformers, peft, the knowledge stack) are imported inside the
modules that need them, so ``chattune --help`` and the data commands start instantly.
"""

__version__ = "0.1.0"
