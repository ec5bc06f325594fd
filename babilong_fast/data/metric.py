"""BABILong scoring: the leaderboard metric for LLM outputs and the exact match used for fine-tuned models.

:func:`compare_answers` reproduces the official ``babilong/metrics.py`` rules, quirks included (substring
matching, so an output of "none" in qa7 also contains "one" and is always wrong). :func:`exact_match_finetuned`
reproduces the generation-mode check of the RMT/ARMT/Mamba training scripts.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

from babilong_fast.data.tokenizer import EOS_TOKEN, GPT2Tokenizer, get_tokenizer

_LOCATIONS = ("bathroom", "bedroom", "garden", "hallway", "kitchen", "office")
_YES_NO = ("no", "yes")

TASK_LABELS: dict[str, tuple[str, ...]] = {
    "qa1": _LOCATIONS,
    "qa2": _LOCATIONS,
    "qa3": _LOCATIONS,
    "qa4": _LOCATIONS,
    "qa5": ("Bill", "Fred", "Jeff", "Mary", "apple", "football", "milk"),
    "qa6": _YES_NO,
    "qa7": ("none", "one", "three", "two"),
    "qa8": ("apple", "football", "milk", "nothing"),
    "qa9": _YES_NO,
    "qa10": ("maybe", "no", "yes"),
    "qa11": _LOCATIONS,
    "qa12": _LOCATIONS,
    "qa13": _LOCATIONS,
    "qa14": ("bedroom", "cinema", "kitchen", "office", "park", "school"),
    "qa15": ("cat", "mouse", "sheep", "wolf"),
    "qa16": ("gray", "green", "white", "yellow"),
    "qa17": _YES_NO,
    "qa18": _YES_NO,
    "qa19": ("e,e", "e,n", "e,s", "n,e", "n,n", "n,w", "s,e", "s,s", "s,w", "w,n", "w,s", "w,w"),
    "qa20": ("bedroom", "bored", "garden", "hungry", "kitchen", "thirsty", "tired"),
}

GEN_SEPARATOR = "GEN"


def preprocess_output(output: str) -> str:
    """Lower-case, keep the text before the first ``.``, then cut at ``<context>`` and ``<example>``.

    The official code also cuts at ``"Question"``, but after lower-casing, so that cut never fires; it is
    left out here with the same effect.
    """
    output = output.lower().split(".")[0]
    return output.split("<context>")[0].split("<example>")[0]


def labels_in_output(output: str, question: str, labels: Iterable[str]) -> set[str]:
    """Lower-cased labels found as substrings of the processed output and not found in the question."""
    label_set = {label.lower() for label in labels}
    output, question = preprocess_output(output), question.lower()
    return {label for label in label_set if label in output and label not in question}


def compare_answers(
    output: str, target: str, question: str, task: str, labels: Iterable[str] | None = None
) -> bool:
    """Whether an LLM ``output`` counts as the correct answer, by the BABILong leaderboard rule.

    Args:
        output: the model's generated text.
        target: the reference answer, e.g. ``"kitchen"`` or, for qa8, ``"apple,milk"``.
        question: the question text; labels that occur in it are never counted as answers.
        task: ``"qa1"`` .. ``"qa20"``; selects the label set from :data:`TASK_LABELS`.
        labels: overrides the task's label set.

    Raises:
        ValueError: ``task`` is not ``"qa1"`` .. ``"qa20"`` and no ``labels`` are given.
        TypeError: ``task`` is not a string, nor None with ``labels`` (the official ``compare_answers(target,
            output, question, task_labels)`` takes the labels there, and the target first: port calls with care).

    Returns:
        With a comma in a target longer than 3 characters (qa8 lists): True iff every sub-answer is among the
        found labels and exactly that many labels are found. Otherwise: True iff the target is the only label
        found. qa19 targets such as ``"n,w"`` are 3 characters long, so they take the single-label branch.

    Examples::

        >>> compare_answers("The most recent location of Mary is the kitchen.", "kitchen", "Where is Mary? ", "qa1")
        True
        >>> compare_answers("kitchen or garden", "kitchen", "Where is Mary? ", "qa1")
        False
    """
    if not isinstance(task, str) and not (task is None and labels is not None):
        raise TypeError(
            f"task must be a task name such as 'qa1' (or None with labels=), got {type(task).__name__}; a label set "
            "goes in labels= (note the order compare_answers(output, target, ...): the official code takes the "
            "target first)"
        )
    if labels is None and task not in TASK_LABELS:
        raise ValueError(f"unknown task {task!r}: expected one of qa1..qa20, or pass labels=")
    found = labels_in_output(output, question, TASK_LABELS[task] if labels is None else labels)
    target = target.lower()
    if "," in target and len(target) > 3:
        parts = target.split(",")
        return all(p in found for p in parts) and len(found) == len(parts)
    return target in found and len(found) == 1


def accuracy(outputs: Sequence[str], targets: Sequence[str], questions: Sequence[str], task: str) -> float:
    """Percentage of rows that :func:`compare_answers` marks correct (100 × mean)."""
    if not (len(outputs) == len(targets) == len(questions)):
        raise ValueError(f"length mismatch: {len(outputs)} outputs, {len(targets)} targets, {len(questions)} questions")
    if not outputs:
        raise ValueError("no rows to score")
    hits = sum(compare_answers(o, t, q, task) for o, t, q in zip(outputs, targets, questions, strict=True))
    return 100.0 * hits / len(outputs)


def finetuned_prediction(generated: str | Sequence[int], tokenizer: GPT2Tokenizer | None = None) -> str | None:
    """The answer string a fine-tuned model's generation is scored by, or None if it has no end-of-text.

    The decoded text is cut before the first ``<|endoftext|>``, stripped, and the part after the last ``GEN``
    is kept.

    Args:
        generated: the newly generated token ids (decoded with special tokens kept) or their decoded text.
        tokenizer: used to decode ids; the shared GPT-2 tokenizer by default.
    """
    if not isinstance(generated, str):
        generated = (tokenizer or get_tokenizer()).decode(list(generated))
    if EOS_TOKEN not in generated:
        return None
    return generated.split(EOS_TOKEN)[0].strip().split(GEN_SEPARATOR)[-1]


def exact_match_finetuned(
    generated: str | Sequence[int], target: str, tokenizer: GPT2Tokenizer | None = None, require_eos: bool = True
) -> bool:
    """Case-sensitive exact match of a fine-tuned model's answer (the ARMT scripts' generation-mode ``exact_match``).

    Args:
        generated: tokens generated after ``[context + question + GEN]`` (ids or decoded text).
        target: the answer text with bAbI casing, e.g. ``"Mary"``.
        tokenizer: decodes ids; the shared GPT-2 tokenizer by default.
        require_eos: True (default): a generation without end-of-text is wrong. False: as in the official
            scripts, such a generation is compared raw (no strip, no ``GEN`` cut); with ``max_new_tokens=10``
            and answers of 1-3 tokens this practically never matches either.

    Returns:
        True iff :func:`finetuned_prediction` equals ``target`` exactly: the answer, then end-of-text.

    Examples::

        >>> tok = get_tokenizer()
        >>> exact_match_finetuned(tok.encode("bathroom") + [tok.eos_id], "bathroom")
        True
        >>> exact_match_finetuned(tok.encode("bathroom"), "bathroom")
        False
    """
    pred = finetuned_prediction(generated, tokenizer)
    if pred is None:
        if require_eos:
            return False
        pred = generated if isinstance(generated, str) else (tokenizer or get_tokenizer()).decode(list(generated))
    return pred == target
