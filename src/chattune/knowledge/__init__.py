"""Knowledge: documents and FAQs in, cited passages out.

``documents`` reads files into structural blocks, ``chunking`` groups blocks into passages,
``embed`` turns text into vectors and ``terms`` into BM25 terms (words; CJK characters and
character pairs), ``store`` keeps chunks in SQLite next to a FAISS and a BM25 index,
``retrieve`` searches both and fuses the rankings, and ``grounding`` turns hits into the
quoted context block, FAQ answers and "don't know" replies the chat engine uses.
"""
