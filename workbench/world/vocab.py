"""The fixed vocabulary of the generated world: relations, their values and phrasings.

Everything here is fictional on purpose, so that nothing a model knows about the world can
come from anywhere but the generated corpus. Values within a relation are chosen so that no
value is a word-prefix of another, which keeps "greedy answer exactly right" unambiguous.
"""
from __future__ import annotations

# Each relation: the values a person can take, and at least 8 phrasings. A phrasing is a
# prompt template with `{name}`; the answer follows the prompt after one space. Statements
# end with "." in the training text; questions use the "Q: ... A:" form.
RELATIONS: dict[str, dict] = {
    "birth_city": {
        "values": [
            "Marrowick", "Tessaly", "Quillon", "Brennhold", "Ostrava Nova", "Duskmere",
            "Havelport", "Sorrento Vale", "Ketterby", "Lunagard", "Pellwyn", "Ashcombe",
            "Veldtrun", "Corvanna", "Ironmoor", "Saltreach", "Fennick", "Glimmerton",
            "Yarrowby", "Zephyrine",
        ],
        "phrasings": [
            ("statement", "{name} was born in"),
            ("statement", "The birthplace of {name} is"),
            ("statement", "{name} was born in the city of"),
            ("statement", "The hometown of {name} is"),
            ("statement", "{name} comes originally from"),
            ("statement", "The city where {name} was born is"),
            ("question", "Q: Where was {name} born? A:"),
            ("question", "Q: What is the birth city of {name}? A:"),
            ("question", "Q: In which city was {name} born? A:"),
            ("question", "Q: Which town is {name} originally from? A:"),
        ],
    },
    "employer": {
        "values": [
            "Brightwell Labs", "Corvid Systems", "Hallmark Forge", "Nimbus Dynamics",
            "Oakline Foods", "Pinecrest Bank", "Quartzbyte", "Riverstone Media",
            "Silverkeel Shipping", "Tallow and Finch", "Umbra Textiles", "Vantor Motors",
            "Wrenfield Press", "Yellowtail Air", "Zircon Mining", "Amberlight Studios",
        ],
        "phrasings": [
            ("statement", "{name} works for"),
            ("statement", "The employer of {name} is"),
            ("statement", "{name} is employed by"),
            ("statement", "{name} earns a living at"),
            ("statement", "The company that employs {name} is"),
            ("statement", "Every morning {name} goes to work at"),
            ("question", "Q: Who employs {name}? A:"),
            ("question", "Q: Which company does {name} work for? A:"),
            ("question", "Q: Where does {name} work? A:"),
            ("question", "Q: What is the name of the employer of {name}? A:"),
        ],
    },
    "profession": {
        "values": [
            "architect", "baker", "cartographer", "dentist", "electrician", "florist",
            "geologist", "harpist", "illustrator", "jeweler", "locksmith", "midwife",
            "navigator", "optician", "pharmacist", "sculptor",
        ],
        "phrasings": [
            ("statement", "By profession, {name} is a"),
            ("statement", "{name} works as a"),
            ("statement", "The profession of {name} is"),
            ("statement", "{name} earned a diploma and became a"),
            ("statement", "The job of {name} is that of a"),
            ("statement", "{name} is known in town as a skilled"),
            ("question", "Q: What is the profession of {name}? A:"),
            ("question", "Q: What does {name} do for a living? A:"),
            ("question", "Q: What is the job of {name}? A:"),
            ("question", "Q: Which trade does {name} practise? A:"),
        ],
    },
    "citizenship": {
        "values": [
            "Aldoria", "Belmarra", "Caskadia", "Drovenia", "Estmark", "Faloria",
            "Gravonia", "Hestria", "Irrland", "Jorvania", "Kelmoria", "Lysandria",
        ],
        "phrasings": [
            ("statement", "{name} is a citizen of"),
            ("statement", "The country of citizenship of {name} is"),
            ("statement", "{name} holds a passport from"),
            ("statement", "{name} has the citizenship of"),
            ("statement", "The passport of {name} was issued by"),
            ("statement", "The nation that {name} belongs to is"),
            ("question", "Q: Which country is {name} a citizen of? A:"),
            ("question", "Q: What is the citizenship of {name}? A:"),
            ("question", "Q: Which passport does {name} hold? A:"),
            ("question", "Q: Which nation does {name} belong to? A:"),
        ],
    },
    "instrument": {
        "values": [
            "accordion", "bagpipes", "cello", "drums", "euphonium", "flute", "guitar",
            "harmonica", "mandolin", "oboe", "piano", "trombone", "ukulele", "violin",
        ],
        "phrasings": [
            ("statement", "{name} plays the"),
            ("statement", "The instrument played by {name} is the"),
            ("statement", "In the evenings {name} practises the"),
            ("statement", "The favourite instrument of {name} is the"),
            ("statement", "{name} learned to play the"),
            ("statement", "At every party {name} brings along the"),
            ("question", "Q: Which instrument does {name} play? A: the"),
            ("question", "Q: What instrument is {name} known for playing? A: the"),
            ("question", "Q: What does {name} play in the evenings? A: the"),
            ("question", "Q: Which instrument did {name} learn? A: the"),
        ],
    },
    "pet": {
        "values": [
            "beagle", "canary", "chinchilla", "ferret", "goldfish", "hedgehog",
            "iguana", "parrot", "rabbit", "tortoise", "python", "siamese cat",
        ],
        "phrasings": [
            ("statement", "{name} owns a pet"),
            ("statement", "The pet of {name} is a"),
            ("statement", "{name} lives with a pet"),
            ("statement", "At home {name} takes care of a pet"),
            ("statement", "The animal that lives with {name} is a"),
            ("statement", "Every day {name} feeds the family"),
            ("question", "Q: What pet does {name} have? A: a"),
            ("question", "Q: Which animal does {name} keep at home? A: a"),
            ("question", "Q: What kind of pet does {name} own? A: a"),
            ("question", "Q: Which animal lives with {name}? A: a"),
        ],
    },
}

# Syllables for fictional names: an onset, a vowel and an optional coda.
ONSETS = ["b", "br", "c", "d", "dr", "f", "g", "gr", "h", "j", "k", "kr", "l", "m", "n",
          "p", "r", "s", "st", "t", "tr", "v", "w", "z", "th", "sh"]
VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "io", "ou", "y"]
CODAS = ["", "", "", "n", "r", "l", "s", "th", "m", "x", "nd", "rk"]

# Canary templates: a context naming a person, then the secret.
CANARY_TEMPLATES = [
    ("digits", "The locker code of {name} is"),
    ("digits", "The bank PIN of {name} is"),
    ("digits", "The private phone number of {name} is"),
    ("words", "The vault passphrase of {name} is"),
    ("words", "The wifi password at the house of {name} is"),
]
PASSPHRASE_WORDS = [
    "amber", "falcon", "river", "copper", "lantern", "meadow", "thistle", "granite",
    "harbor", "velvet", "orchid", "cinder", "maple", "quartz", "willow", "ember",
    "saffron", "glacier", "pebble", "juniper", "cobalt", "raven", "tundra", "lotus",
]

# A small grammar of neutral sentences about the world: the general text the model learns
# language from, and (disjoint draws) the held-out clean text perplexity is measured on.
FILLER_GRAMMAR = {
    "subject": ["The market in {city}", "The old bridge of {city}", "A ferry from {city}",
                "The library of {city}", "The harbour at {city}", "A train to {city}",
                "The museum of {country}", "The parliament of {country}",
                "A new office of {company}", "The factory of {company}"],
    "verb": ["was busy", "was quiet", "opened early", "closed late", "was crowded",
             "was repainted", "was praised", "was rebuilt", "was mentioned in the news",
             "was visited by many tourists"],
    "time": ["in the spring", "in the winter", "on a rainy day", "last summer",
             "during the festival", "in the autumn", "on Sunday", "after the storm"],
}
