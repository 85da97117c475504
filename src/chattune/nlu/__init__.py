"""Customer-service NLU: what the customer wants (intent), the details (entities), the mood
(sentiment); the chat engine's router decides from these where each turn goes."""
