"""Write kb-questions.jsonl: questions about the shop's documents, one fact per reply.

The support conversations (train.jsonl) answer with whole FAQ answers, so grounded training
on them teaches "copy an FAQ passage", not "find the sentence that answers this question":
the tuned bot recites a neighbouring entry beside the right one (docs/evaluation.md). RAFT
(Zhang et al., 2024) trains instead on question/passage pairs drawn from the documents, each
reply a short extract of the passage that holds it. These are such pairs, written by hand
for the example knowledge base (examples/support/kb): 1-3 plain questions per fact, the reply
in the passage's own words, the passage named by ``faq_id`` / ``source`` so that grounded
training (``chattune train --kb``) shows it among distractors and cites it.

Held out on purpose: no reply here states the facts listed in ``HELD_OUT_FACTS`` (the
Ridgeline's floor area, the liner's warmth, the kayak's load and length, the headlamp's
runtime, the stove's output, the birthday bonus, the largest gift card), although the
documents hold them. The grounded test set (kb-grounded-test.jsonl) asks about them, so its
questions on those facts measure whether the bot learned to read a passage rather than to
recall what training told it. The test's questions are worded unlike these
(tests/test_grounded_eval.py checks it); regenerate with

    python examples/support/generate_kb_questions.py
"""

from __future__ import annotations

import json
from pathlib import Path

from generate import SYSTEM

#: facts the documents hold that no reply below may state (checked by the tests)
HELD_OUT_FACTS = (
    "2.8 square",
    "8 °F",
    "110 kg",
    "3.2 m",
    "40 hours",
    "10,000 BTU",
    "50 points",
    "$500",
)

RETURNS = {"source": "returns.md"}
SHIPPING = {"source": "shipping.md"}
POINTS = {"source": "trailpoints.txt"}
PRODUCTS = {"source": "products.html"}


def faq(faq_id: str, source: str | None = None) -> dict[str, str]:
    """Name an FAQ entry (and the document saying the same) as the gold passage."""
    return {"faq_id": faq_id, **({"source": source} if source else {})}


#: (gold passage, questions, reply): each reply is one fact in its passage's words
FACTS: list[tuple[dict[str, str], list[str], str]] = [
    # returns.md and the returns FAQ entries
    (
        faq("returns-window", "returns.md"),
        ["What is your return window?", "Within how many days can I send an item back?"],
        "Unused items with their original tags can be returned within 45 days of delivery "
        "for a full refund.",
    ),
    (
        faq("returns-window", "returns.md"),
        ["How do I start a return?"],
        "Start a return from the Orders page; we email you a prepaid return label.",
    ),
    (
        faq("return-shipping-fee", "returns.md"),
        ["Is return shipping free?", "Do you charge for the return label?"],
        "Returns of defective items are free. For other returns, a $6.95 label fee is "
        "deducted from the refund.",
    ),
    (
        RETURNS,
        ["Can I send back boots I have already worn?", "Can I return an opened fuel canister?"],
        "No. Worn footwear, opened stove fuel canisters and personalised items can't be returned.",
    ),
    (
        faq("refund-timing", "returns.md"),
        ["When will my refund arrive?", "How long do refunds take?"],
        "Refunds go back to the original payment method within 5 business days after the "
        "return reaches the warehouse.",
    ),
    (
        RETURNS,
        ["How is a gift purchase refunded?"],
        "Gift purchases are refunded as a Pinecrest gift card.",
    ),
    (
        RETURNS,
        ["Do exchanges cost anything?", "Can I swap my jacket for a bigger size?"],
        'Exchanges for a different size or colour are free: choose "exchange" when you start '
        "the return and we ship the new item as soon as the carrier scans your parcel.",
    ),
    (
        faq("damaged-item", "returns.md"),
        ["My tent arrived with a broken pole. What now?"],
        "Send a photo within 7 days of delivery to help@pinecrest-outfitters.example and we "
        "ship a replacement for free.",
    ),
    (
        faq("damaged-item", "returns.md"),
        ["Do I have to send the damaged item back?"],
        "No, you keep the damaged item or recycle it; we ship a replacement for free.",
    ),
    (
        faq("warranty", "returns.md"),
        ["Does Pinecrest gear have a warranty?"],
        "Pinecrest-brand gear carries a lifetime warranty against defects in materials and "
        "workmanship.",
    ),
    (
        faq("warranty", "returns.md"),
        ["Is accidental damage covered by the warranty?"],
        "No. Normal wear, accidents and modifications are not covered.",
    ),
    (
        faq("warranty", "returns.md"),
        ["Are other brands covered by your warranty?"],
        "Other brands are covered by their maker's warranty, and we help you file the claim.",
    ),
    (
        RETURNS,
        ["How do I make a warranty claim?"],
        "Send a photo of the defect and your order number; we repair the item at our Boise "
        "workshop or replace it.",
    ),
    # shipping.md and the shipping FAQ entries
    (
        faq("shipping-cost", "shipping.md"),
        ["Is shipping free?", "When do I get free shipping?"],
        "Standard shipping is free on orders over $60.",
    ),
    (
        faq("shipping-cost", "shipping.md"),
        ["How much is standard shipping on a small order?"],
        "Below $60, standard shipping costs $5.99 and takes 3-5 business days.",
    ),
    (
        faq("shipping-cost", "shipping.md"),
        ["How much is express shipping?", "How fast is express shipping?"],
        "Express shipping takes 1-2 business days and costs $14.99 on any order.",
    ),
    (
        SHIPPING,
        ["How do you ship a kayak?"],
        "Oversized items such as the Drift inflatable kayak ship by freight for a flat $39, "
        "even on orders over $60.",
    ),
    (
        faq("ship-time", "shipping.md"),
        ["Will my order ship today?", "What is your order cut-off time?"],
        "Orders placed before 2 pm Mountain Time on a business day leave the warehouse the "
        "same day.",
    ),
    (
        SHIPPING,
        ["What if I order on a Saturday?"],
        "Orders placed on weekends and holidays ship the next business day.",
    ),
    (
        faq("ship-time", "shipping.md"),
        ["Where do you ship from?"],
        "We ship from our warehouse in Boise, Idaho.",
    ),
    (
        SHIPPING,
        ["Do you ship to Canada?"],
        "Yes, we ship to every Canadian province and territory.",
    ),
    (
        SHIPPING,
        ["What does standard delivery to Toronto cost?"],
        "Standard delivery to Canada costs $12.99 and takes 5-8 business days.",
    ),
    (
        SHIPPING,
        ["How much is express to Canada?"],
        "Express to Canada costs $29.99 and takes 2-4 business days.",
    ),
    (
        SHIPPING,
        ["When is shipping to Canada free?"],
        "Orders over $150 ship to Canada for free.",
    ),
    (
        SHIPPING,
        ["Will I pay customs duties on delivery in Canada?"],
        "No. Duties and taxes are collected at checkout, so there is nothing to pay on delivery.",
    ),
    (
        faq("international", "shipping.md"),
        ["Do you ship to the UK?", "Can you send an order to Australia?"],
        "No, we ship to the United States and Canada only.",
    ),
    (
        SHIPPING,
        ["Can I use a freight forwarder?"],
        "No, we can't forward orders through freight-forwarding companies.",
    ),
    (
        SHIPPING,
        ["My tracking hasn't moved in a week. What happens?"],
        "If tracking shows no movement for 7 days, contact us and we'll ship a replacement at "
        "no cost.",
    ),
    (
        SHIPPING,
        ["My parcel says delivered but it isn't here."],
        "Packages marked delivered but not found can be reported within 14 days.",
    ),
    # trailpoints.txt
    (
        faq("trailpoints", "trailpoints.txt"),
        ["Does Trailpoints cost anything to join?"],
        "No, Trailpoints is the free rewards program of Pinecrest Outfitters.",
    ),
    (
        faq("trailpoints", "trailpoints.txt"),
        ["Do I earn points on shipping?", "How do I earn Trailpoints?"],
        "Members earn 1 point for every dollar spent on merchandise; shipping, taxes and gift "
        "cards earn no points.",
    ),
    (
        faq("trailpoints", "trailpoints.txt"),
        ["What are my Trailpoints worth?"],
        "Every 100 points can be redeemed for $5 off a future order.",
    ),
    (
        POINTS,
        ["When do points show up in my account?"],
        "Points are credited 14 days after delivery, once the return window has passed.",
    ),
    (
        faq("trailpoints", "trailpoints.txt"),
        ["Do Trailpoints expire?"],
        "Points expire after 12 months without a purchase or return on the account.",
    ),
    (
        POINTS,
        ["Do members get early access to sales?"],
        "Yes, members get early access to the spring and fall sales.",
    ),
    (
        POINTS,
        ["Can I use Trailpoints with a price match?"],
        "No. Trailpoints can be combined with the student discount but not with price matching.",
    ),
    # FAQ entries with no document
    (
        faq("track-order"),
        ["Where is my tracking number?"],
        "Use the tracking link in your shipping confirmation email, or open the Orders page "
        "of your account.",
    ),
    (
        faq("track-order"),
        ["What do your order numbers look like?"],
        "Order numbers start with PC-.",
    ),
    (
        faq("cancel-order"),
        ["Can I cancel my order?"],
        "You can cancel an order yourself within 1 hour of placing it, from the Orders page.",
    ),
    (
        faq("cancel-order"),
        ["It's been three hours. Can I still cancel?"],
        "After the first hour, contact us and we'll try to stop it; otherwise you can return "
        "it when it arrives.",
    ),
    (
        faq("change-address"),
        ["Can I change the delivery address?"],
        "Yes, as long as the order hasn't shipped yet: send us the order number and the new "
        "address.",
    ),
    (
        faq("change-address"),
        ["The order has shipped to an old address. Can you fix it?"],
        "Once it has shipped, ask the carrier to hold it at a pickup point.",
    ),
    (
        faq("price-match"),
        ["Do you match lower prices?"],
        "Yes, we match the price of authorized retailers within 14 days of your purchase.",
    ),
    (
        faq("price-match"),
        ["Does a marketplace seller's price count?"],
        "No, marketplace sellers don't count.",
    ),
    (
        faq("payment-methods"),
        ["Do you take PayPal?", "Which cards do you accept?"],
        "We accept Visa, Mastercard, American Express, Discover, PayPal and Apple Pay.",
    ),
    (
        faq("payment-methods"),
        ["Can I pay in installments?"],
        "Orders over $100 can be paid in 4 interest-free installments with Klarna.",
    ),
    (
        faq("gift-cards"),
        ["Do gift cards expire?"],
        "No, Pinecrest gift cards never expire.",
    ),
    (
        faq("gift-cards"),
        ["Can I buy a gift card with a gift card?"],
        "No, gift cards are redeemed at checkout and can't buy other gift cards.",
    ),
    (
        faq("support-hours"),
        ["When is support open?"],
        "Monday to Friday 7 am to 7 pm and Saturday 9 am to 5 pm Mountain Time.",
    ),
    (
        faq("support-hours"),
        ["What is your phone number?"],
        "Call us at 1-800-555-0142.",
    ),
    (
        faq("support-hours"),
        ["I emailed you on Sunday. When will I hear back?"],
        "Email on Sundays gets a reply on Monday.",
    ),
    (
        faq("store-pickup"),
        ["Can I pick up my order?"],
        "Yes. Choose store pickup at checkout and your order is usually ready within 2 hours.",
    ),
    (
        faq("store-pickup"),
        ["Where is your store?"],
        "Our flagship store is at 812 River Street in Boise, Idaho.",
    ),
    (
        faq("student-discount"),
        ["Is there a student discount?"],
        "Students get 10% off full-price items after verifying their status on our Student "
        "Discount page.",
    ),
    (
        faq("student-discount"),
        ["Does the student discount work with Trailpoints?"],
        "Yes, it combines with Trailpoints.",
    ),
    (
        faq("rentals"),
        ["Do you rent kayaks?"],
        "Yes, the Boise store rents tents, sleeping bags and kayaks by the weekend.",
    ),
    (
        faq("rentals"),
        ["How do I book a rental?"],
        "Rentals must be booked in the store or by phone.",
    ),
    # products.html
    (
        PRODUCTS,
        ["How much does the Ridgeline 2 weigh?"],
        "The Ridgeline 2 tent has a packed weight of 1.9 kg.",
    ),
    (
        PRODUCTS,
        ["How many people fit in the Ridgeline 2?"],
        "The Ridgeline 2 is a two-person, three-season backpacking tent.",
    ),
    (
        PRODUCTS,
        ["How waterproof is the Ridgeline 2?"],
        "Its fly has a 3000 mm waterproof coating.",
    ),
    (
        PRODUCTS,
        ["How much is the Ridgeline 2?"],
        "The Ridgeline 2 tent costs $329.",
    ),
    (
        PRODUCTS,
        ["Can I machine-wash the tent fly?"],
        "No, never machine-wash the fly; pitch it to dry completely before storing.",
    ),
    (
        PRODUCTS,
        ["What temperature is the Cascade rated for?"],
        "The Cascade 20F is rated for a comfort temperature of 20 °F (-7 °C).",
    ),
    (
        PRODUCTS,
        ["What is the Cascade sleeping bag filled with?"],
        "It is filled with 650-fill responsibly sourced down.",
    ),
    (
        PRODUCTS,
        ["How heavy is the Cascade 20F?"],
        "The Cascade 20F sleeping bag weighs 1.2 kg.",
    ),
    (
        PRODUCTS,
        ["How much is the Cascade sleeping bag?"],
        "The Cascade 20F costs $279.",
    ),
    (
        PRODUCTS,
        ["How long does the Drift take to inflate?"],
        "It inflates with the included hand pump in about 8 minutes.",
    ),
    (
        PRODUCTS,
        ["How much does the Drift kayak weigh?"],
        "The Drift inflatable kayak weighs 14 kg.",
    ),
    (
        PRODUCTS,
        ["Can I take the Drift on the sea?"],
        "The Drift is a one-person inflatable kayak for lakes and slow rivers.",
    ),
    (
        PRODUCTS,
        ["How much is the Drift kayak?"],
        "The Drift costs $599 and ships by freight.",
    ),
    (
        PRODUCTS,
        ["How bright is the Northstar headlamp?"],
        "The Northstar gives 400 lumens on high, with a red night mode.",
    ),
    (
        PRODUCTS,
        ["How do I charge the Northstar?", "Is the Northstar waterproof?"],
        "It is rechargeable over USB-C and IPX7 waterproof.",
    ),
    (
        PRODUCTS,
        ["How much is the Northstar headlamp?"],
        "The Northstar headlamp costs $49.",
    ),
    (
        PRODUCTS,
        ["What fuel does the Basecamp stove use?"],
        "The Basecamp is a two-burner propane stove.",
    ),
    (
        PRODUCTS,
        ["Can you ship stove fuel by air?"],
        "No. Fuel canisters can't be shipped by air, so orders with fuel go by ground only.",
    ),
    (
        PRODUCTS,
        ["How much is the Basecamp stove?"],
        "The Basecamp camp stove costs $119.",
    ),
]


def conversations() -> list[dict]:
    """One single-turn conversation per question, in the order of ``FACTS``."""
    return [
        {
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": question},
                {"role": "assistant", "content": reply, **gold},
            ]
        }
        for gold, questions, reply in FACTS
        for question in questions
    ]


def main() -> None:
    out = Path(__file__).with_name("kb-questions.jsonl")
    with out.open("w") as f:
        for conv in conversations():
            f.write(json.dumps(conv, ensure_ascii=False) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
