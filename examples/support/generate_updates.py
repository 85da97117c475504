"""Write the continual-learning data of Pinecrest Outfitters (examples/support/updates/).

Domain A is what generate.py writes (train.jsonl, val.jsonl): the shop's policies. This
script writes what comes after it, for a bot that must learn more without forgetting A:

- b-train.jsonl, b-val.jsonl: domain B, the services Pinecrest launched this season (repair
  shop, guided trips, trade-in, paddle demo days, ...). Their facts are invented, so a base
  model cannot guess them, and none contradicts a policy of domain A or of kb/.
- corrections.jsonl: a changed policy, as a person correcting the bot would write it: the
  free-shipping threshold went down from $60 to $40 (rates and delivery times stay).
- checks.jsonl: questions to ask once the bot has learned, with a string a correct reply
  must contain: kind "changed" (the new threshold, in phrasings that are not among the
  corrections) and kind "old" (domain A policies, in generate.py's training phrasings).

Conversations are assembled by generate.py's machinery (system prompt, names, products,
openings, closings) with fixed seeds, so the files are reproducible:

    python examples/support/generate_updates.py

As in generate.py, validation conversations use question phrasings that never occur in
training.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import generate

# intent: (train phrasings, validation phrasings, answer, [(follow-up, answer), ...])
B_INTENTS: dict[str, tuple[list[str], list[str], str, list[tuple[str, str]]]] = {
    "repair_shop": (
        [
            "Do you repair gear?",
            "Can you fix a broken zip on my jacket?",
            "Do you resole hiking boots?",
            "My tent pole snapped, can you repair it?",
        ],
        [
            "Is there a repair service for worn-out gear?",
            "Could I get my old boots resoled at Pinecrest?",
        ],
        "Yes! Our new Repair Shop in the Boise store fixes gear of any brand: a zip "
        "replacement is $25, a tent pole section $18 and boot resoling $89. Most repairs take "
        "10 business days.",
        [
            (
                "Can I mail my gear in?",
                "Yes, fill in the form on the Repair page and we'll email "
                "you a prepaid label. Repaired gear ships back to you for a flat $8.",
            ),
            (
                "Is the repair free if it's a defect?",
                "Defects in Pinecrest-brand gear are still "
                "repaired for free under the lifetime warranty. The Repair Shop prices are for "
                "normal wear and accidents.",
            ),
        ],
    ),
    "guided_trips": (
        [
            "Do you offer guided trips?",
            "Can I book a guided backpacking trip?",
            "How much does a guided trip cost?",
            "When are your guided trips this summer?",
        ],
        [
            "Do you run any group hikes with a guide?",
            "Are there overnight outings with a guide I can sign up for?",
        ],
        "Yes, this season we run guided overnight backpacking trips in the Sawtooth Mountains "
        "on the first and third Saturday of each month from June to September. A trip costs "
        "$195 per person, including tent, stove and meals, with at most 8 hikers per guide. "
        "Book on the Trips page.",
        [
            (
                "What if I need to cancel?",
                "You get a full refund if you cancel at least 10 days "
                "before the trip. After that we refund 50%, or move you to another date for free.",
            ),
            (
                "Do I need any experience?",
                "No, the trips are made for beginners: about 6 miles a "
                "day, with a guide certified in wilderness first aid. Hikers must be 16 or older.",
            ),
        ],
    ),
    "trade_in": (
        [
            "Do you have a trade-in program?",
            "Can I trade in my old tent?",
            "What do you give for used gear?",
            "Can I get store credit for my used jacket?",
        ],
        ["Will you buy back my old hiking gear?"],
        "Yes, with our Second Trail program you can trade in used tents, sleeping bags, "
        "backpacks, jackets and boots of any brand. You get store credit worth 30% of the "
        "original price, or 50% if the item is like new, on a Pinecrest gift card.",
        [
            (
                "How do I trade something in?",
                "Bring it to the Boise store, or print a free label from "
                "the Second Trail page and mail it in. We inspect it and email your credit within "
                "4 business days.",
            ),
            (
                "What if my gear is too worn to resell?",
                "We recycle it for free, and you still get $5 in store credit.",
            ),
        ],
    ),
    "demo_day": (
        [
            "When is the kayak demo day?",
            "Can I try a paddle board before buying one?",
            "Do you have a paddle demo event?",
            "Can I test the Drift kayak on the water?",
        ],
        [
            "Is there a day where I can test kayaks?",
            "Are you hosting an event to try out paddle boards?",
        ],
        "Yes! Our free Paddle Demo Days are on the last Saturday of June, July and August, "
        "from 9 am to 3 pm at Pine Hollow Lake, 20 minutes from the Boise store. You can try "
        "the Drift inflatable kayak and our paddle boards. Each day has 40 spots, so sign up on "
        "the Events page.",
        [
            (
                "Do I need to bring a life jacket?",
                "No, we provide life jackets and paddles. Bring water "
                "shoes and clothes that can get wet.",
            ),
            ("Can kids come too?", "Kids 12 and older can paddle together with a signed-up adult."),
        ],
    ),
    "newsletter": (
        [
            "Do you have a newsletter?",
            "Is there a discount for signing up to your emails?",
            "Do I get a discount on my first order?",
            "How do I get the welcome discount?",
        ],
        ["Is there a promo for new customers?", "What do I get for joining your mailing list?"],
        "Yes, sign up for Trail Notes, our weekly email, on the home page and you get a code "
        "for 15% off your first order of full-price items. The code is valid for 30 days.",
        [
            (
                "Can I combine it with the student discount?",
                "No, the welcome code can't be "
                "combined with the student discount; you can use one or the other.",
            ),
            (
                "How often do you send emails?",
                "Trail Notes comes out every Thursday, and you can unsubscribe with one click.",
            ),
        ],
    ),
    "skills_clinics": (
        [
            "Do you run any classes?",
            "Are there workshops at the Boise store?",
            "Can I learn map and compass skills with you?",
        ],
        ["Do you teach outdoor skills?"],
        "Yes, our free Skills Clinics are every Wednesday at 6:30 pm in the Boise store: map "
        "and compass, backcountry cooking and bear safety take turns each week. A clinic lasts "
        "90 minutes and has 20 seats; reserve yours on the Events page.",
        [
            (
                "Can I join online?",
                "Yes, every clinic is also streamed live on the Events page, and "
                "the recording stays online for 2 weeks.",
            )
        ],
    ),
    "boot_fitting": (
        [
            "Can I get my boots fitted?",
            "Do you do boot fittings?",
            "How do I book a boot fitting appointment?",
            "Can someone help me find the right hiking boot size?",
        ],
        [
            "Is there someone in the store who can fit my hiking boots?",
            "Do I need an appointment to get fitted for boots?",
        ],
        "Yes, we now offer free 30-minute boot fittings at the Boise store on Tuesdays and "
        "Thursdays from 10 am to 6 pm. Book a slot on the Boot Fitting page and bring the "
        "socks you hike in.",
        [
            (
                "Do I have to buy boots afterwards?",
                "Not at all, the fitting is free with no obligation to buy.",
            ),
            (
                "Can you make custom insoles?",
                "Yes, custom heat-moulded insoles cost $55 and are made "
                "during the same appointment.",
            ),
        ],
    ),
    "club_discount": (
        [
            "Do you have discounts for hiking clubs?",
            "I run a scout troop, do we get a discount?",
            "Is there a group discount?",
        ],
        ["Can our outdoor club get a discount?"],
        "Yes, the new Pinecrest Club Program gives registered outdoor clubs, scout troops and "
        "school groups 12% off orders of $250 or more. Apply on the Clubs page with proof of "
        "your group; approval takes 3 business days.",
        [
            (
                "Do club orders still earn Trailpoints?",
                "Yes, club orders earn Trailpoints as usual, and you can redeem points on them.",
            )
        ],
    ),
}

# The changed policy: free standard shipping from $40 instead of $60; everything else stays.
CORRECTION = (
    "Standard shipping is free on orders over $40. Below that, standard shipping (3-5 "
    "business days) is $5.99, and express (1-2 business days) is $14.99."
)
# Two are generate.py's training phrasings (the answers the tuned model knows best).
CORRECTION_QUESTIONS = [
    "Is shipping free?",
    "How much do you charge for delivery?",
    "How much is shipping?",
    "Do you offer free shipping?",
    "What's the minimum order for free shipping?",
    "How much do I need to spend to get free delivery?",
    "What does standard shipping cost?",
    "Is there a shipping fee on small orders?",
]
# question, what a correct reply must contain, kind: "changed" (the new threshold, phrasings
# not among the corrections) or "old" (a domain A policy, phrased as in generate.py's training)
CHECKS = [
    ("When does shipping become free?", "$40", "changed"),
    ("How much are your delivery charges?", "$40", "changed"),
    ("How long do I have to return something?", "45 days", "old"),
    ("Do gift cards expire?", "never expire", "old"),
    ("How do Trailpoints work?", "1 point per dollar", "old"),
]


def validate() -> None:
    """Fail if the files would not measure what they claim to."""
    a_train = {q for qs, _, _, _ in generate.INTENTS.values() for q in qs}
    a_val = {q for _, qs, _, _ in generate.INTENTS.values() for q in qs}
    b_train = {q for qs, _, _, _ in B_INTENTS.values() for q in qs}
    b_val = {q for _, qs, _, _ in B_INTENTS.values() for q in qs}
    assert not set(B_INTENTS) & set(generate.INTENTS), "domain B reuses an intent name"
    assert not b_val & (b_train | a_train), "a domain B validation phrasing is trained on"
    assert not (b_train | b_val) & (a_train | a_val), "a domain B phrasing is in domain A"
    changed = {q for q, _, kind in CHECKS if kind == "changed"}
    assert not changed & (set(CORRECTION_QUESTIONS) | a_train), "a changed check is trained on"
    for question, expect, kind in CHECKS:
        if kind == "old":
            assert question in a_train, f"old check not in domain A training: {question}"
            intent = next(k for k, (qs, _, _, _) in generate.INTENTS.items() if question in qs)
            assert expect in generate.INTENTS[intent][2], f"{expect!r} not in the A answer"
        else:
            assert expect in CORRECTION, f"{expect!r} not in the correction"
    old = generate.INTENTS["shipping_cost"][2]
    assert old.replace("$60", "$40") == CORRECTION, "the correction changes more than $60"


def write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{path}: {len(rows)} lines")


def main() -> None:
    validate()
    out = Path(__file__).parent / "updates"
    out.mkdir(exist_ok=True)
    for split, per_question, seed in (("train", 3, 11), ("val", 1, 12)):
        write(out / f"b-{split}.jsonl", generate.build(split, per_question, seed, B_INTENTS))
    write(
        out / "corrections.jsonl",
        [{"question": q, "correction": CORRECTION} for q in CORRECTION_QUESTIONS],
    )
    write(
        out / "checks.jsonl",
        [{"question": q, "expect": e, "kind": k} for q, e, k in CHECKS],
    )


if __name__ == "__main__":
    main()
