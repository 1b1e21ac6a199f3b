"""Caption metrics through pycocoevalcap, the standard COCO caption scorer, plus gender-word errors."""
from __future__ import annotations

GENDER = {
    "male": {"man", "men", "boy", "boys", "he", "his", "him", "gentleman", "guy", "guys", "father", "son",
             "husband", "brother", "male"},
    "female": {"woman", "women", "girl", "girls", "she", "her", "hers", "lady", "ladies", "mother",
               "daughter", "wife", "sister", "female"},
}


def corpus_scores(refs: dict[str, list[str]], hyps: dict[str, str],
                  metrics: tuple[str, ...] = ("bleu", "meteor", "rouge", "cider")) -> dict[str, float]:
    """Scores over normalised (lower-case, space-separated) captions; BLEU/METEOR/ROUGE-L in percent."""
    gts = {k: refs[k] for k in hyps}
    res = {k: [hyps[k] or "<empty>"] for k in hyps}
    out: dict[str, float] = {}
    if "bleu" in metrics:
        from pycocoevalcap.bleu.bleu import Bleu
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        out.update({f"BLEU-{n + 1}": 100 * b for n, b in enumerate(bleu)})
    if "meteor" in metrics:
        from pycocoevalcap.meteor.meteor import Meteor
        out["METEOR"] = 100 * Meteor().compute_score(gts, res)[0]
    if "rouge" in metrics:
        from pycocoevalcap.rouge.rouge import Rouge
        out["ROUGE-L"] = 100 * Rouge().compute_score(gts, res)[0]
    if "cider" in metrics:
        from pycocoevalcap.cider.cider import Cider
        out["CIDEr"] = Cider().compute_score(gts, res)[0]
    return out


def gender_of(text: str) -> str | None:
    words = set(text.split())
    found = [g for g, vocab in GENDER.items() if words & vocab]
    return found[0] if len(found) == 1 else None


def gender_error_rate(refs: dict[str, list[str]], hyps: dict[str, str]) -> dict[str, float]:
    """Of the captions that name a gender, on images whose gendered references all agree, how many
    name the other one (the 'gender-word error rate' of the projects edgecap grew from)."""
    judged = wrong = 0
    for name, hyp in hyps.items():
        said = gender_of(hyp)
        truth = {g for g in (gender_of(r) for r in refs[name]) if g}
        if said is None or len(truth) != 1:
            continue
        judged += 1
        wrong += said not in truth
    return {"gendered_captions": judged, "gender_errors": wrong,
            "gender_error_rate": 100 * wrong / judged if judged else 0.0}
