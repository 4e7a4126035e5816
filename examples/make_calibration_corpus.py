"""Write fffconvert's shipped calibration corpus (fffconvert/data/calibration.txt).

The text is generated from the project's own templates and word lists, seeded, so it is
reproducible and free of third-party text. For a real conversion, calibrate on text from your
own domain (`--calib-data`); this corpus only has to make the FFN neurons fire the way ordinary
English does.

    python examples/make_calibration_corpus.py --lines 6000 --out fffconvert/data/calibration.txt
"""
import argparse
import random

W = {
    "name": "Alice Omar Priya Jonas Mei Carlos Fatima Liam Sofia Kenji Amara Noah Elena Ravi Hannah Diego Yuki "
            "Grace Mateo Leila Samuel Ingrid Tariq Chloe Viktor Nadia Oscar Aisha Felix Rosa".split(),
    "city": "Paris Lagos Tokyo Denver Lima Oslo Cairo Mumbai Toronto Seoul Madrid Nairobi Berlin Sydney Austin "
            "Dublin Hanoi Quito Prague Chicago".split(),
    "noun": "movie film book album song story plot actor director camera phone laptop engine river mountain "
            "village market school teacher student doctor nurse patient hospital court judge law bank loan "
            "company market share price report study scientist experiment theory planet star garden kitchen "
            "recipe meal coffee train airport flight hotel museum painting artist concert crowd team coach "
            "player season match goal storm forest ocean island bridge road car bicycle budget policy "
            "election voter senator minister council city street neighbor family child parent friend letter "
            "email meeting project deadline manager employee customer product service battery screen "
            "software update bug feature server network database algorithm model dataset result".split(),
    "adj": "good great terrible boring brilliant slow fast quiet loud bright dark cheap expensive careful "
           "careless honest strange familiar modern ancient simple complex beautiful ugly warm cold fresh "
           "stale funny serious gentle harsh clever clumsy reliable broken tiny huge popular obscure "
           "charming dull vivid painful pleasant awkward elegant messy tidy rare common early late "
           "confusing clear predictable surprising moving forgettable powerful weak".split(),
    "verb_past": "saw watched read bought sold built fixed broke found lost visited praised criticized "
                 "ignored loved hated finished started cancelled approved rejected announced delayed "
                 "reviewed tested designed painted wrote described explained questioned measured "
                 "reported won missed cooked cleaned moved opened closed shared borrowed returned".split(),
    "verb": "see watch read buy sell build fix find visit praise criticize ignore love hate finish start "
            "cancel approve reject announce delay review test design paint write describe explain measure "
            "report win cook clean move open close share borrow return recommend avoid".split(),
    "adv": "quickly slowly carefully suddenly quietly rarely often barely clearly honestly frankly really "
           "completely hardly surprisingly finally eventually probably certainly almost".split(),
    "feel": "happy sad angry tired excited worried relieved bored proud nervous grateful disappointed "
            "curious confused delighted annoyed".split(),
}
W["time"] = ["yesterday", "today", "last week", "last year", "this morning", "on Monday", "in March",
             "after dinner", "before noon", "during the holidays", "at midnight", "in the spring"]

TEMPLATES = [
    "the {noun} was {adj} , but the {noun} was {adj} .",
    "{name} {verb_past} the {adj} {noun} in {city} {time} .",
    "i {adv} {verb_past} this {noun} and it was {adj} .",
    "a {adj} , {adj} {noun} that never feels {adj} .",
    "why did {name} {verb} the {noun} {time} ?",
    "{name} said the {noun} in {city} is {adv} {adj} .",
    "if you {verb} one {noun} this year , {verb} this one .",
    "the {noun} of the {noun} {verb_past} {number} {noun}s {time} .",
    "{name} felt {feel} when the {noun} {verb_past} the {noun} .",
    "it is {adv} {adj} to {verb} a {noun} without a {noun} .",
    "officials in {city} {verb_past} a plan to {verb} the {noun} by {number} percent .",
    "how many {noun}s does {name} need to {verb} the {noun} ?",
    "not {adj} , not {adj} , just {adv} {adj} .",
    "the {adj} {noun} {adv} {verb_past} the {adj} {noun} , and {name} was {feel} .",
    "{name} and {name} {verb_past} {number} {noun}s in {city} .",
    "do not {verb} the {noun} ; it is {adj} and {adj} .",
    "after {number} years , the {noun} still feels {adj} .",
    "the {noun} costs {number} dollars , which is {adj} for a {noun} .",
    "{name} asked whether the {noun} would {verb} the {noun} before {time} .",
    "what a {adj} {noun} ! {name} would {verb} it again .",
]


def sentence(rng: random.Random) -> str:
    t = rng.choice(TEMPLATES)
    out = []
    for part in t.split("{"):
        if "}" in part:
            key, rest = part.split("}", 1)
            out.append(str(rng.randint(2, 900)) if key == "number" else rng.choice(W[key]))
            out.append(rest)
        else:
            out.append(part)
    s = "".join(out)
    return s[0].upper() + s[1:]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=6000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="fffconvert/data/calibration.txt")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    with open(args.out, "w", encoding="utf-8") as f:
        for _ in range(args.lines):  # one to three sentences a line
            f.write(" ".join(sentence(rng) for _ in range(rng.randint(1, 3))) + "\n")


if __name__ == "__main__":
    main()
