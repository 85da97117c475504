"""Build the tiny byte-level BPE tokenizer the tests use (run once; the output is committed).

Tests need a real tokenizer with a real chat template, but a 49k-entry vocabulary would make
the tiny test models mostly embedding. This one has 384 tokens, SmolLM2's special tokens and
SmolLM2's ChatML template, so tests exercise the same rendering path as the embedded model.

    python tests/assets/make_tiny_tokenizer.py
"""

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "Hello! How can I help you today? Where is my order? It shipped on Monday.",
    "You can return any item within 45 days for a full refund. Shipping is free over $60.",
    "Thank you for contacting support. Your tracking number is in the confirmation email.",
    "The quick brown fox jumps over the lazy dog. system user assistant",
    "I would like to change my delivery address, please. Of course, what is the new one?",
    "0123456789 .,;:!?'\"()[]{}<>-_/\\@#$%^&*+=~` abcdefghijklmnopqrstuvwxyz",
] * 20


def main() -> None:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=384,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|im_end|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    out = Path(__file__).parent / "tiny-tokenizer"
    fast.save_pretrained(out)
    print(f"saved {len(fast)} tokens to {out}")


if __name__ == "__main__":
    main()
