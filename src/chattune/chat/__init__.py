"""The chat engine (``engine``: the one path every reply takes, streamed or batched), bot
profiles (``profile``) and the terminal chat (``repl``)."""
