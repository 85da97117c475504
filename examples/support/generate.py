"""Write the Pinecrest Outfitters support conversations (train.jsonl, val.jsonl).

Pinecrest Outfitters is a made-up online outdoor-gear shop. Its policies below are the facts a
fine-tuned model should learn (a base model cannot know them: 45-day returns, free shipping
over $60, Trailpoints, ...). Conversations are assembled from hand-written openings,
questions, answers and follow-ups with a fixed seed, so the files are reproducible:

    python examples/support/generate.py

Validation conversations use question phrasings that never occur in training, so evaluation
measures whether the policy was learned rather than the sentence memorised.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SYSTEM = (
    "You are Pine, the customer support assistant of Pinecrest Outfitters, an online "
    "outdoor gear store. Be friendly, brief and accurate."
)
NAMES = [
    "Maya",
    "Jordan",
    "Priya",
    "Sam",
    "Elena",
    "Marcus",
    "Aiko",
    "Daniel",
    "Fatima",
    "Liam",
    "Sofia",
    "Noah",
    "Grace",
    "Omar",
    "Hannah",
    "Diego",
    "Chloe",
    "Ethan",
]
PRODUCTS = [
    "Ridgeline 2 tent",
    "Summit 30L daypack",
    "Alpine down jacket",
    "Trailhead hiking boots",
    "Cascade 20F sleeping bag",
    "Granite trekking poles",
    "Basecamp camp stove",
    "Drift inflatable kayak",
    "Timberline fleece",
    "Northstar headlamp",
]
OPENINGS = [
    ("Hi there!", "Hi! Welcome to Pinecrest Outfitters support. How can I help you today?"),
    ("Hello", "Hello! This is Pine from Pinecrest Outfitters. What can I do for you?"),
    ("Hey, I have a question.", "Of course, happy to help. What's your question?"),
    ("Good morning!", "Good morning! How can I help you today?"),
    (
        "hi, is this Pinecrest support?",
        "Yes, you've reached Pinecrest Outfitters support. How can I help?",
    ),
]
CLOSINGS = [
    ("Thanks, that's all I needed.", "You're welcome! Enjoy your time outdoors."),
    ("Great, thank you!", "Happy to help. Have a great trip!"),
    ("Perfect, thanks so much.", "Anytime! Let us know if anything else comes up."),
    ("ok thanks", "You're welcome! Have a good day."),
]

# intent: (train phrasings, validation phrasings, answer, [(follow-up, answer), ...])
INTENTS: dict[str, tuple[list[str], list[str], str, list[tuple[str, str]]]] = {
    "returns": (
        [
            "How long do I have to return something?",
            "What's your return policy?",
            "Can I return an item I bought last month?",
            "I want to send back my {product}. Is that possible?",
        ],
        ["Is there a time limit on returns?", "Until when can I return my {product}?"],
        "You can return unused items with their tags within 45 days of delivery for a full "
        "refund. Start the return from the Orders page and we'll email you a return label.",
        [
            (
                "Do I have to pay for return shipping?",
                "Returns of defective items are free. For "
                "other returns, a $6.95 label fee is deducted from your refund.",
            ),
            (
                "How soon do I get my money back?",
                "Refunds go back to your original payment "
                "method within 5 business days after the return reaches our warehouse.",
            ),
        ],
    ),
    "shipping_cost": (
        [
            "How much is shipping?",
            "Do you offer free shipping?",
            "What does delivery cost?",
            "Is shipping free if I buy the {product}?",
        ],
        ["Will I be charged for shipping?", "What are your shipping fees?"],
        "Standard shipping is free on orders over $60. Below that, standard shipping (3-5 "
        "business days) is $5.99, and express (1-2 business days) is $14.99.",
        [
            (
                "When will my order ship?",
                "Orders placed before 2 pm Mountain Time ship the same "
                "business day from our warehouse in Boise, Idaho.",
            ),
            (
                "Do you ship to Canada?",
                "Yes, we ship to the United States and Canada. We don't "
                "ship to other countries yet.",
            ),
        ],
    ),
    "international": (
        [
            "Do you ship internationally?",
            "Can you send an order to the UK?",
            "Do you deliver outside the US?",
        ],
        ["Can I order from Germany?"],
        "We currently ship to the United States and Canada only. We don't ship to other "
        "countries yet.",
        [
            (
                "How long does shipping to Canada take?",
                "Standard shipping to Canada usually "
                "takes 5-8 business days; duties are included in the price at checkout.",
            )
        ],
    ),
    "order_status": (
        [
            "Where is my order?",
            "My order hasn't arrived yet.",
            "Can you check on order {order}?",
            "I ordered the {product} last week and haven't received it.",
        ],
        ["Any update on my package?", "How do I track my delivery?"],
        "You can track your package from the link in your shipping confirmation email, or on "
        "the Orders page of your account. If you share your order number (it starts with PC-), "
        "I can check it for you.",
        [
            (
                "It's {order}.",
                "Thanks! Order {order} left our Boise warehouse and is with the "
                "carrier. The tracking link in your shipping email shows the latest scan.",
            ),
            (
                "The tracking hasn't updated in a week.",
                "I'm sorry about that. If tracking shows "
                "no movement for 7 days, we'll ship a replacement at no cost. I've flagged your "
                "order for our shipping team, and they'll email you within one business day.",
            ),
        ],
    ),
    "cancel": (
        [
            "How do I cancel my order?",
            "I need to cancel order {order}.",
            "Can I cancel an order I just placed?",
        ],
        ["I changed my mind about my purchase, can I stop the order?"],
        "You can cancel an order yourself within 1 hour of placing it, from the Orders page. "
        "After that it may already be packed, so contact us and we'll try to stop it; "
        "otherwise you can return it when it arrives.",
        [
            (
                "It's been two hours.",
                "No problem, I've asked the warehouse to stop it. If it has "
                "already shipped, you can return it free of the label fee within 45 days.",
            )
        ],
    ),
    "address": (
        [
            "Can I change my shipping address?",
            "I put the wrong address on my order.",
            "I'm moving, can you send order {order} somewhere else?",
        ],
        ["How do I update the delivery address?"],
        "Yes, as long as the order hasn't shipped yet. Send me the order number and the new "
        "address and I'll update it.",
        [
            (
                "What if it already shipped?",
                "Once it has shipped we can't redirect it, but you "
                "can ask the carrier to hold it at a pickup point using your tracking link.",
            )
        ],
    ),
    "warranty": (
        [
            "Is there a warranty on your gear?",
            "My {product} broke, is it covered?",
            "Do Pinecrest products have a guarantee?",
        ],
        ["What happens if my gear has a defect?"],
        "Pinecrest-brand gear has a lifetime warranty against manufacturing defects. Other "
        "brands are covered by their maker's warranty, and we help you file the claim. Normal "
        "wear and accidents aren't covered.",
        [
            (
                "How do I make a claim?",
                "Send a photo of the defect and your order number to "
                "help@pinecrest-outfitters.example, and we'll repair or replace it.",
            )
        ],
    ),
    "damaged": (
        [
            "My {product} arrived damaged.",
            "The box was crushed and the item is broken.",
            "I received a damaged item.",
        ],
        ["Something in my order came broken, what now?"],
        "I'm sorry it arrived damaged! Please send a photo within 7 days of delivery and "
        "we'll ship a replacement for free; you don't need to return the damaged item.",
        [
            (
                "Where do I send the photo?",
                "Reply to your order confirmation email or send it to "
                "help@pinecrest-outfitters.example with your order number.",
            )
        ],
    ),
    "loyalty": (
        [
            "Do you have a rewards program?",
            "How do Trailpoints work?",
            "Do I earn points on purchases?",
        ],
        ["Is there a loyalty program?"],
        "Yes! Trailpoints is free to join. You earn 1 point per dollar spent, and every 100 "
        "points is $5 off a future order.",
        [("Do points expire?", "Trailpoints expire after 12 months without a purchase or return.")],
    ),
    "price_match": (
        [
            "Do you price match?",
            "I found the {product} cheaper elsewhere.",
            "The price dropped after I bought it, can I get the difference?",
        ],
        ["Will you match a competitor's price?"],
        "Yes, we match the price of authorized retailers within 14 days of your purchase. "
        "Send me a link to the lower price and your order number.",
        [
            (
                "Does that include Amazon?",
                "Only if the item is sold by an authorized retailer, not a marketplace seller.",
            )
        ],
    ),
    "payment": (
        [
            "What payment methods do you accept?",
            "Can I pay with PayPal?",
            "Do you offer pay later?",
        ],
        ["Which cards do you take?"],
        "We accept Visa, Mastercard, American Express, Discover, PayPal and Apple Pay. For "
        "orders over $100 you can also pay in 4 installments with Klarna.",
        [
            (
                "Is Klarna interest free?",
                "Yes, Klarna's 4 installments are interest free if you pay on time.",
            )
        ],
    ),
    "gift_cards": (
        ["Do gift cards expire?", "Can I buy a gift card?", "How do I use a gift card?"],
        ["Do your gift cards have an expiry date?"],
        "Pinecrest gift cards never expire. You can buy them from $25 to $500 and redeem "
        "them at checkout; they can't be used to buy other gift cards.",
        [
            (
                "Can I check my balance?",
                "Yes, enter the card number on the Gift Cards page to see your balance.",
            )
        ],
    ),
    "hours": (
        ["What are your support hours?", "Can I call you?", "How do I reach a person?"],
        ["When is customer service open?"],
        "Our support team is available Monday to Friday 7 am to 7 pm and Saturday 9 am to 5 "
        "pm Mountain Time, at 1-800-555-0142 or help@pinecrest-outfitters.example.",
        [
            (
                "Are you open on Sunday?",
                "Phone support is closed on Sundays, but you can email "
                "us and we'll reply on Monday.",
            )
        ],
    ),
    "pickup": (
        [
            "Do you have a physical store?",
            "Can I pick up my order in person?",
            "Is there a store in Boise?",
        ],
        ["Can I collect my order instead of shipping it?"],
        "Yes, our flagship store is at 812 River Street in Boise, Idaho. Choose store pickup "
        "at checkout and your order is usually ready within 2 hours.",
        [("What are the store hours?", "The Boise store is open every day from 9 am to 8 pm.")],
    ),
    "student": (
        ["Do you have a student discount?", "Are there discounts for students?"],
        ["I'm in college, do I get a discount?"],
        "Yes, students get 10% off full-price items after verifying their status on our "
        "Student Discount page.",
        [
            (
                "Can I combine it with Trailpoints?",
                "Yes, you can use Trailpoints together with the student discount.",
            )
        ],
    ),
    "sleeping_bag": (
        [
            "How warm is the Cascade 20F sleeping bag?",
            "What does the 20F rating mean?",
            "Which sleeping bag for camping near freezing?",
        ],
        ["Is the Cascade bag warm enough for winter?"],
        "The Cascade 20F is rated by the ISO standard: its comfort temperature is 32F and its "
        "limit is 20F. It's a good choice for three-season camping down to freezing.",
        [
            (
                "Is it good for winter camping?",
                "For nights well below freezing, we'd recommend a "
                "0F bag or a liner with the Cascade.",
            )
        ],
    ),
}


def conversation(intent: str, question: str, rng: random.Random, intents: dict = INTENTS) -> dict:
    _, _, answer, follow_ups = intents[intent]
    order = f"PC-{rng.randint(100000, 999999)}"
    product = rng.choice(PRODUCTS)

    def f(text: str) -> str:
        return text.format(product=product, order=order)

    messages = [{"role": "system", "content": SYSTEM}] if rng.random() < 0.8 else []
    if rng.random() < 0.6:
        hello, reply = rng.choice(OPENINGS)
        name = rng.choice(NAMES)
        if rng.random() < 0.3:
            hello, reply = f"{hello} I'm {name}.", reply.replace("!", f", {name}!", 1)
        messages += [{"role": "user", "content": hello}, {"role": "assistant", "content": reply}]
    messages += [
        {"role": "user", "content": f(question)},
        {"role": "assistant", "content": f(answer)},
    ]
    for follow, follow_answer in rng.sample(follow_ups, k=rng.randint(0, len(follow_ups))):
        messages += [
            {"role": "user", "content": f(follow)},
            {"role": "assistant", "content": f(follow_answer)},
        ]
    if rng.random() < 0.5:
        bye, reply = rng.choice(CLOSINGS)
        messages += [{"role": "user", "content": bye}, {"role": "assistant", "content": reply}]
    return {"messages": messages}


def build(split: str, per_question: int, seed: int, intents: dict = INTENTS) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for intent, (train_qs, val_qs, _, _) in intents.items():
        for question in train_qs if split == "train" else val_qs:
            rows += [conversation(intent, question, rng, intents) for _ in range(per_question)]
    rng.shuffle(rows)
    return rows


def main() -> None:
    here = Path(__file__).parent
    for split, per_question, seed in (("train", 3, 1), ("val", 1, 2)):
        rows = build(split, per_question, seed)
        path = here / f"{split}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"{path}: {len(rows)} conversations")


if __name__ == "__main__":
    main()
