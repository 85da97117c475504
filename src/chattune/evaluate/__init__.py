"""Evaluation: did fine-tuning help, and by how much?

``examples`` turns conversations into (history, reference reply) pairs; ``metrics`` scores
replies (sacrebleu, rouge-score, SQuAD-style F1, distinct-n) in the words ``languages`` picks
for each language; ``generation`` gets replies
through the chat engine (so the bot profile applies); ``perplexity`` scores references by
teacher forcing; ``scoring`` and ``run`` put two models side by side with bootstrap intervals;
``report`` writes HTML/Markdown; ``ratings`` records and summarises human preferences;
``during_training`` is the ``on_evaluate`` callback ``chattune train --eval-generate`` uses.
With a knowledge base, ``questions`` reads question files (gold facts and sources),
``facts`` matches facts and "I don't know" in replies, and ``grounded`` scores each grounded
reply against the sources it was shown (fact accuracy, citations, the don't-know rate).
"""
