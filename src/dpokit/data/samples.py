"""Built-in sample preference pairs.

A small generator that varies topic, prompt wording and answer wording, so that pairs held out
from a sample are new sentences rather than copies of training rows. Chosen answers are
helpful (a definition, a detail and an example, in full sentences); rejected answers are curt,
dismissive, vague or wrong (another topic's definition), some short and some as long as a
good answer. Deterministic for a given seed.
"""

from __future__ import annotations

import random

# topic, what it is, how it works / why it matters, an example
TOPICS: list[tuple[str, str, str, str]] = [
    ("machine learning", "a way for computers to learn patterns from data instead of following fixed rules",
     "a model is trained on examples and then makes predictions on new inputs",
     "a spam filter learns from emails that people marked as spam"),
    ("photosynthesis", "the process plants use to turn light into chemical energy",
     "chlorophyll captures sunlight and the plant combines water and carbon dioxide into sugar",
     "a leaf in the sun releases oxygen while it makes glucose"),
    ("quantum computing", "computing with qubits that can hold a mix of zero and one at the same time",
     "algorithms use superposition and interference to solve some problems faster",
     "factoring large numbers could become much faster on a large quantum computer"),
    ("the water cycle", "the movement of water between the sea, the air and the land",
     "water evaporates, forms clouds, falls as rain and flows back to the sea",
     "a puddle dries in the sun and the vapour later falls as rain somewhere else"),
    ("inflation", "a general rise in prices that lowers what money can buy",
     "it happens when demand grows faster than supply or when costs go up",
     "bread that cost one dollar last year might cost more this year"),
    ("the immune system", "the network of cells and organs that defends the body against infection",
     "white blood cells find germs and antibodies mark them for removal",
     "a vaccine trains the body to recognise a virus before a real infection"),
    ("gravity", "the force that pulls masses toward each other",
     "the more mass an object has, the stronger it pulls on other objects",
     "an apple falls to the ground and the moon stays in orbit around the earth"),
    ("a database", "an organised store of data that programs can search and update",
     "data is kept in tables or documents and read with queries",
     "a library keeps its catalogue of books in a database"),
    ("recycling", "turning used materials into new products",
     "waste is sorted, cleaned and processed into raw material again",
     "old bottles can be melted down and made into new glass"),
    ("the internet", "a worldwide network of connected computers",
     "computers exchange data in small packets that follow shared protocols",
     "a web page travels from a server to your phone in many packets"),
    ("climate change", "the long-term warming of the planet and the changes it brings",
     "greenhouse gases trap heat in the atmosphere",
     "glaciers are shrinking and heat waves are becoming more common"),
    ("a budget", "a plan for how to spend and save money",
     "you list your income and expenses and decide limits for each category",
     "setting aside a part of each paycheck for rent and savings"),
    ("exercise", "physical activity that keeps the body and mind healthy",
     "it strengthens the heart and muscles and improves mood",
     "a brisk walk of thirty minutes a day lowers the risk of heart disease"),
    ("a volcano", "an opening in the earth's crust where molten rock escapes",
     "pressure from magma below pushes lava, ash and gas to the surface",
     "Mount Etna in Italy erupts several times a decade"),
    ("encryption", "a way to scramble data so that only people with a key can read it",
     "a mathematical algorithm turns readable text into ciphertext and back",
     "your browser encrypts the connection when you log in to your bank"),
    ("the stock market", "a place where people buy and sell shares of companies",
     "prices move as buyers and sellers agree on what a share is worth",
     "buying a share of a company makes you a small owner of it"),
    ("sleep", "the regular rest that lets the body and brain recover",
     "during sleep the brain stores memories and the body repairs tissue",
     "adults who sleep seven to nine hours think more clearly the next day"),
    ("electricity", "the flow of electric charge through a conductor",
     "a voltage pushes electrons through a wire and the current powers devices",
     "a battery drives current through a circuit to light a bulb"),
    ("democracy", "a system of government in which citizens choose their leaders",
     "people vote in free elections and leaders answer to the public",
     "a country holds elections every few years to pick its parliament"),
    ("a black hole", "a region of space where gravity is so strong that nothing can escape",
     "it forms when a very massive star collapses under its own weight",
     "astronomers photographed the black hole at the centre of the galaxy M87"),
    ("composting", "turning food scraps and garden waste into rich soil",
     "microbes break down organic matter when it has air and moisture",
     "vegetable peels become dark compost for a garden after a few months"),
    ("a neural network", "a model built from layers of simple connected units",
     "each layer transforms its input and training adjusts the connection weights",
     "a neural network can recognise handwritten digits in photos"),
    ("the solar system", "the sun and everything that orbits it",
     "eight planets travel around the sun held by its gravity",
     "the earth is the third planet from the sun"),
    ("vaccines", "medicines that teach the immune system to fight a disease",
     "they show the body a harmless part of a germ so it can prepare defences",
     "the measles vaccine has prevented millions of infections"),
    ("a programming language", "a formal language for writing instructions that computers run",
     "code is written in text and then compiled or interpreted into machine actions",
     "Python is a popular language for data analysis"),
    ("the heart", "the muscle that pumps blood through the body",
     "it contracts about seventy times a minute to move oxygen to every organ",
     "the heart beats faster during exercise to supply the muscles"),
    ("renewable energy", "energy from sources that do not run out, such as sun and wind",
     "solar panels and wind turbines turn natural flows into electricity",
     "many homes now have solar panels on the roof"),
    ("a rainbow", "an arc of colours that appears when sunlight meets raindrops",
     "each drop bends and reflects light, splitting it into its colours",
     "after a summer shower you may see a rainbow opposite the sun"),
    ("time management", "planning how to use your time well",
     "you set priorities, break work into steps and protect time for each",
     "writing a to-do list each morning helps you finish the important tasks"),
    ("the printing press", "a machine that presses inked type onto paper",
     "movable letters are arranged into pages and printed many times",
     "Gutenberg's press made books cheap enough for many people to own"),
    ("earthquakes", "sudden shaking of the ground caused by moving rock",
     "tectonic plates build up stress and release it along faults",
     "Japan builds flexible buildings to survive strong earthquakes"),
    ("a healthy diet", "eating a balance of foods that give the body what it needs",
     "vegetables, whole grains and protein supply vitamins and energy",
     "a plate that is half vegetables is a simple rule to follow"),
    ("bees", "insects that collect nectar and pollen from flowers",
     "as they move between flowers they carry pollen that helps plants reproduce",
     "many fruits such as apples depend on bees for pollination"),
    ("the moon", "the natural satellite that orbits the earth",
     "its gravity pulls on the oceans and causes the tides",
     "a full moon happens about once every twenty nine days"),
    ("cloud computing", "renting computing power and storage over the internet",
     "providers run large data centres and share them among many customers",
     "a photo app may store your pictures in the cloud"),
    ("interest on savings", "money a bank pays you for keeping money with it",
     "the bank lends your deposit to others and shares part of what it earns",
     "one hundred dollars at five percent grows to one hundred and five in a year"),
]

PROMPTS = [
    "Explain {t}.", "What is {t}?", "Can you tell me about {t}?", "Describe {t} in simple terms.",
    "How would you explain {t} to a beginner?", "I want to understand {t}. Can you help?",
    "Give me a short explanation of {t}.", "What should I know about {t}?",
    "Please explain {t} to me.", "Teach me the basics of {t}.",
]

# Chosen answers: an opening, a body and a closing, drawn independently, so that a topic's
# answers come in ~150 wordings and held-out pairs rarely repeat a training answer word for word.
OPENINGS = [
    "", "Good question! ", "Sure. ", "Happy to help. ", "Here is a clear explanation. ", "Of course. ",
]

CHOSEN = [
    "{T} {is} {what}. In short, {how}. For example, {ex}.",
    "{T} {is} {what}. It works like this: {how}. A simple example: {ex}.",
    "{T} {is} {what}. The key idea is that {how}. To make it concrete, {ex}.",
    "In a sentence, {t} {is} {what}. {How}. As an example, {ex}.",
    "Put simply, {t} {is} {what}. Here is how: {how}. One everyday example is that {ex}.",
]

CLOSINGS = [
    "", " I hope this helps!", " Let me know if you want more detail.", " Feel free to ask a follow-up question.",
    " That is the main idea.",
]

REJECTED = [
    "I don't know.",
    "No idea, sorry.",
    "{T}? It's complicated. Too complicated to explain, honestly.",
    "I don't really know much about {t}. It is probably something about {u}, but I would not trust me on that.",
    "{T} {is} not worth explaining. Most people never need to know about that, so I will not go into it here.",
    "Why would you want to know about {t}? It is boring. Let us talk about {u} instead.",
    "{T} {is} {wu}. That is all there is to it.",
    "Just search the internet for {t}. There are many pages about it and I do not have time to explain it.",
    "It is a thing that exists. Some people like it and some people do not. Hard to say more than that.",
    "{T} {has} something to do with {u}, I think. Or maybe not. I am not sure about any of it.",
    "That is a boring question and I would rather not answer it.",
    "Everyone already knows what {t} {is}, so there is no need for me to explain it.",
]

PLURAL = {"bees", "vaccines", "earthquakes"}

# The share of good answer templates in the tiny model's warm-up. Good answers are long, and a
# long memorised phrase is easy to predict token by token; at 0.32 the warmed-up model gives
# chosen and rejected answers about the same mean per-token log-prob (it prefers the chosen
# answer on ~0.5 of sample pairs), so the demo starts with no preference and DPO must teach one.
GOOD_SHARE = 0.32


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _fill(name: str, what: str, how: str, example: str, unrelated: tuple[str, ...]) -> dict[str, str]:
    plural = name in PLURAL
    return {"t": name, "T": _cap(name), "is": "are" if plural else "is", "has": "have" if plural else "has",
            "what": what, "how": how, "How": _cap(how), "ex": example, "u": unrelated[0], "wu": unrelated[1]}


def _chosen(rng: random.Random, fill: dict) -> str:
    body = rng.choice(CHOSEN).format(**fill)
    opening = rng.choice(OPENINGS)
    if opening:  # "Sure. in a sentence, ..." would not do: the body's first letter follows a sentence end
        body = _cap(body)
    return opening + body + rng.choice(CLOSINGS)


def sample_pairs(n: int = 10, seed: int = 0) -> list[dict[str, str]]:
    """Return ``n`` preference pairs ``{prompt, chosen, rejected}`` drawn with ``seed``."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        topic = TOPICS[(i + rng.randrange(len(TOPICS))) % len(TOPICS)]
        unrelated = rng.choice([t for t in TOPICS if t[0] != topic[0]])
        fill = _fill(*topic, unrelated)
        rows.append({
            "prompt": rng.choice(PROMPTS).format(**fill),
            "chosen": _chosen(rng, fill),
            "rejected": rng.choice(REJECTED).format(**fill),
        })
    return rows


def warmup_texts(n: int, seed: int = 0) -> list[str]:
    """Texts for the tiny model's warm-up: prompts and answers whose slots are filled from
    *independently drawn* topics, in good and bad templates (`GOOD_SHARE`), each answer with an opening
    and a closing as often as not.

    The model learns the words and phrases of the samples, but not which definition belongs to
    which topic, nor that helpful answers follow questions: so before DPO it has no systematic
    preference between the chosen and rejected answers of a sample pair.
    """
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        slots = [rng.choice(TOPICS) for _ in range(5)]
        fill = _fill(slots[0][0], slots[1][1], slots[2][2], slots[3][3], slots[4])
        answer = rng.choice(CHOSEN if rng.random() < GOOD_SHARE else REJECTED).format(**fill)
        if rng.random() < 0.5:
            answer = rng.choice(OPENINGS) + _cap(answer) + rng.choice(CLOSINGS)
        other = rng.choice(TOPICS)[0]
        texts.append(rng.choice(PROMPTS).format(t=other, T=_cap(other)) + answer)
    return texts


def corpus_text() -> str:
    """Text used to train the built-in tiny tokenizer: every word the samples can contain."""
    parts = []
    for topic in TOPICS:
        fill = _fill(*topic, topic)
        parts += [p.format(**fill) for p in PROMPTS + CHOSEN + REJECTED]
    parts += OPENINGS + CLOSINGS + ["are have"]  # redundant, but GOOD_SHARE was tuned with this exact corpus
    return "\n".join(parts)
