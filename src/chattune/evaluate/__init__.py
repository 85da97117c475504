"""Evaluation: did fine-tuning help, and by how much?

``examples`` turns conversations into (history, reference reply) pairs; ``metrics`` scores
replies (sacrebleu, rouge-score, SQuAD-style F1, distinct-n); ``generation`` produces replies
in batches; ``perplexity`` scores references by teacher forcing; ``compare`` puts two models
side by side with bootstrap intervals; ``report`` writes HTML/Markdown; ``ratings`` records
and summarises human preferences.
"""
