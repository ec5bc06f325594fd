"""bAbI qa1-qa5 vocabulary and sentence templates (bAbI ``world_basic`` world, v1.2 English wording)."""
from __future__ import annotations

import random

LOCATIONS = ("bathroom", "bedroom", "garden", "hallway", "kitchen", "office")
PEOPLE = ("John", "Mary", "Sandra", "Daniel")
GIVE_PEOPLE = ("Bill", "Fred", "Jeff", "Mary")
OBJECTS = ("apple", "football", "milk")
DIRECTIONS = ("north", "south", "east", "west")
OPPOSITE = {"north": "south", "south": "north", "east": "west", "west": "east"}

# Hidden start locations of qa9/qa10 people (qa1-qa5 draw theirs per story, see world.World); never stated.
PERSON_START = {
    "John": "kitchen", "Mary": "bedroom", "Sandra": "garden", "Daniel": "hallway",
    "Bill": "kitchen", "Fred": "garden", "Jeff": "hallway",
}

MOVE_VERBS = ("moved to", "went to", "journeyed to", "travelled to", "went back to")
GET_VERBS = ("got", "grabbed", "picked up", "took")
DROP_VERBS = ("dropped", "discarded", "put down", "left")
GIVE_VERBS = ("gave", "passed", "handed")


def move_sentence(rng: random.Random, person: str, location: str) -> str:
    return f"{person} {rng.choice(MOVE_VERBS)} the {location}."


def _with_there(rng: random.Random, text: str) -> str:
    return f"{text} there." if rng.random() < 0.5 else f"{text}."


def get_sentence(rng: random.Random, person: str, obj: str) -> str:
    return _with_there(rng, f"{person} {rng.choice(GET_VERBS)} the {obj}")


def drop_sentence(rng: random.Random, person: str, obj: str) -> str:
    return _with_there(rng, f"{person} {rng.choice(DROP_VERBS)} the {obj}")


def give_sentence(rng: random.Random, giver: str, obj: str, receiver: str) -> str:
    return f"{giver} {rng.choice(GIVE_VERBS)} the {obj} to {receiver}."


def relation_sentence(a: str, direction: str, b: str) -> str:
    return f"The {a} is {direction} of the {b}."

# qa10 (indefinite knowledge) uses its own cast and places, as in bAbI.
PEOPLE10 = ("Bill", "Fred", "Julie", "Mary")
LOCATIONS10 = ("bedroom", "cinema", "kitchen", "office", "park", "school")
COUNT_WORDS = ("none", "one", "two", "three")


def be_in_sentence(person: str, location: str) -> str:
    return f"{person} is in the {location}."


def no_longer_sentence(person: str, location: str) -> str:
    return f"{person} is no longer in the {location}."


def not_in_sentence(person: str, location: str) -> str:
    return f"{person} is not in the {location}."


def either_sentence(person: str, a: str, b: str) -> str:
    return f"{person} is either in the {a} or the {b}."
