"""MATH (Hendrycks et al. 2021), the paper's Table 7, with Minerva's evaluation (Lewkowycz et al. 2022).

(Named `minerva_math` so that it never shadows the standard library's `math`.)

- Data: the full 5,000-problem test set from `math/MATH_test.tar.gz` (the original per-problem JSON files, read
  from the archive without unpacking; task `math`), or the 500-problem subset of PRM800K ("MATH-500",
  `math/prm800k_math500_test.jsonl`; task `math500`). The gold answer is the last `\\boxed{...}` / `\\fbox{...}`
  of the reference solution (PRM800K's `answer` field where given).
- Prompt: Minerva's 4-shot prompt (Lewkowycz et al., Appendix D.2; the same four exemplars as lm-evaluation-harness's
  `minerva_math`): `Problem:\\n{problem}\\n\\nSolution: {solution}` blocks separated by a blank line, then
  `Problem:\\n{problem}\\n\\nSolution:`; each exemplar's solution ends in "Final Answer: The final answer is X. I
  hope it is correct." Generation stops at the next "Problem:".
- Answer: the text of "Final Answer: The final answer is X. I hope it is correct." in the generation, else its
  last `\\boxed{}`; then Minerva's final-answer normalisation (`normalize_final_answer`, Appendix D.1: the part after
  the last "=", units and filler words removed, `\\text{}` / `\\boxed{}` / `$` unwrapped, `\\fracab` -> `\\frac{a}{b}`).
- Equivalence (`is_equiv`): equal normalised strings, or mathematically equal by HuggingFace's `math-verify`
  (sympy-backed LaTeX parsing; the `eval` extra) when it is installed. Without it only the normalised strings are
  compared, and the results say which was used (`EQUIVALENCE`).
- maj1@1 is greedy; maj1@k draws k samples (the paper, as Minerva: k = 256, temperature 0.6 by default here) and
  votes on the normalised answers; the vote's answer is then checked for equivalence.
- Scores are reported overall, per subject ("Algebra", ...) and per level ("Level 1".."Level 5").
"""

from __future__ import annotations

import json
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from llamaforge.errors import UserError
from llamaforge.eval.items import majority
from llamaforge.eval.taskfile import read_jsonl
from llamaforge.eval.tasks.multiple_choice import find_data

try:
    from math_verify import parse as _mv_parse
    from math_verify import verify as _mv_verify
except ImportError:  # the eval extra is not installed: compare normalised strings only
    _mv_parse = _mv_verify = None

EQUIVALENCE = ("Minerva-normalised strings, then math-verify" if _mv_verify is not None
               else "Minerva-normalised strings only (install llamaforge[eval] for math-verify)")
STOP = ["Problem:"]

# Minerva's four exemplars (Lewkowycz et al. 2022, Appendix D.2).
EXEMPLARS = [
    ("Find the domain of the expression  $\\frac{\\sqrt{x-2}}{\\sqrt{5-x}}$.",
     "The expressions inside each square root must be non-negative. Therefore, $x-2 \\ge 0$, so $x\\ge2$, and "
     "$5 - x \\ge 0$, so $x \\le 5$. Also, the denominator cannot be equal to zero, so $5-x>0$, which gives $x<5$. "
     "Therefore, the domain of the expression is $\\boxed{[2,5)}$.\n"
     "Final Answer: The final answer is $[2,5)$. I hope it is correct."),
    ("If $\\det \\mathbf{A} = 2$ and $\\det \\mathbf{B} = 12,$ then find $\\det (\\mathbf{A} \\mathbf{B}).$",
     "We have that $\\det (\\mathbf{A} \\mathbf{B}) = (\\det \\mathbf{A})(\\det \\mathbf{B}) = (2)(12) = "
     "\\boxed{24}.$\nFinal Answer: The final answer is $24$. I hope it is correct."),
    ("Terrell usually lifts two 20-pound weights 12 times. If he uses two 15-pound weights instead, how many times "
     "must Terrell lift them in order to lift the same total weight?",
     "If Terrell lifts two 20-pound weights 12 times, he lifts a total of $2\\cdot 12\\cdot20=480$ pounds of weight."
     "  If he lifts two 15-pound weights instead for $n$ times, he will lift a total of $2\\cdot15\\cdot n=30n$ "
     "pounds of weight.  Equating this to 480 pounds, we can solve for $n$:\n\\begin{align*}\n30n&=480\\\\\n"
     "\\Rightarrow\\qquad n&=480/30=\\boxed{16}\n\\end{align*}\n"
     "Final Answer: The final answer is $16$. I hope it is correct."),
    ("If the system of equations\n\n\\begin{align*}\n6x-4y&=a,\\\\\n6y-9x &=b.\n\\end{align*}has a solution $(x, y)$ "
     "where $x$ and $y$ are both nonzero,\nfind $\\frac{a}{b},$ assuming $b$ is nonzero.",
     "If we multiply the first equation by $-\\frac{3}{2}$, we obtain\n\n$$6y-9x=-\\frac{3}{2}a.$$Since we also "
     "know that $6y-9x=b$, we have\n\n$$-\\frac{3}{2}a=b\\Rightarrow\\frac{a}{b}=\\boxed{-\\frac{2}{3}}.$$\n"
     "Final Answer: The final answer is $-\\frac{2}{3}$. I hope it is correct."),
]


def fewshot_prompt(problem: str, shots: int = 4) -> str:
    """The prompt for `problem`: the first `shots` of Minerva's four exemplars (Lewkowycz et al. 2022, Appendix
    D.2; "Problem:\n...\n\nSolution: ..."), then the problem and "Solution:".
    """
    blocks = [f"Problem:\n{p}\n\nSolution: {s}" for p, s in EXEMPLARS[:shots]]
    return "\n\n".join([*blocks, f"Problem:\n{problem}\n\nSolution:"])


# ---------------------------------------------------------------------------------------------------------------
# answers


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` or `\\fbox{...}` (braces matched), or of `\\boxed x` up to a `$`."""
    starts = [(m.start(), m.group()) for m in re.finditer(r"\\boxed\s*\{|\\fbox\s*\{|\\boxed ", text)]
    if not starts:
        return None
    at, opener = starts[-1]
    if not opener.endswith("{"):  # "\boxed 5$"
        return text[at + len(opener) :].split("$")[0].strip()
    depth, i = 0, at + len(opener) - 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j]
    return None


FINAL_ANSWER = re.compile(r"Final Answer: The final answer is(.*?)\. I hope it is correct\.", re.S)


def extract_answer(generation: str) -> str | None:
    """The unnormalised final answer of a generation in Minerva's format, else its last \\boxed{}, else None."""
    found = FINAL_ANSWER.search(generation + " I hope it is correct.")
    if found and found.group(1).strip():
        return found.group(1).strip()
    return last_boxed(generation)


# Minerva, Appendix D.1: replacements, then expressions removed (units, filler words, spacing commands).
SUBSTITUTIONS = [("an ", ""), ("a ", ""), (".$", "$"), ("\\$", ""), ("\\ ", ""), (" ", ""), ("mbox", "text"),
                 (",\\text{and}", ","), ("\\text{and}", ","), ("\\text{m}", "\\text{}")]
REMOVED_EXPRESSIONS = ["square", "ways", "integers", "dollars", "mph", "inches", "ft", "hours", "km", "units",
                       "\\ldots", "sue", "points", "feet", "minutes", "digits", "cents", "degrees", "cm", "gm",
                       "pounds", "meters", "meals", "edges", "students", "childrentickets", "multiples",
                       "\\text{s}", "\\text{.}", "\\text{\ns}", "\\text{}^2", "\\text{}^3", "\\text{\n}", "\\text{}",
                       "\\mathrm{th}", "^\\circ", "^{\\circ}", "\\;", ",\\!", "{,}", '"', "\\dots"]
_WORDS = [e for e in REMOVED_EXPRESSIONS if e.isalpha()]


def normalize_final_answer(answer: str) -> str:
    """Minerva's final-answer normalisation (Lewkowycz et al. 2022, Appendix D.1), with two guards: unit words
    are removed as whole words before spaces go (so `\\left` keeps its "ft" and "2\\pi cm" loses "cm"), and
    `\\dfrac` / `\\tfrac` read as `\\frac`."""
    text = answer.split("=")[-1]
    for word in _WORDS:  # whole words first, while spaces still delimit them; never inside a \command
        text = re.sub(rf"(?<![\\A-Za-z]){word}(?![A-Za-z])", "", text)
    for before, after in SUBSTITUTIONS:
        text = text.replace(before, after)
    for expr in REMOVED_EXPRESSIONS:
        if expr.isalpha():  # units glued to a number ("5cm"), outside \command names
            parts = re.split(r"(\\[A-Za-z]+)", text)
            text = "".join(p if k % 2 else p.replace(expr, "") for k, p in enumerate(parts))
        else:
            text = text.replace(expr, "")
    text = re.sub(r"(\\[dt]frac)", r"\\frac", text)
    text = re.sub(r"(.*?)(\$)(.*?)(\$)(.*)", "$\\3$", text)  # the first $...$ span
    for command in ("text", "textbf", "overline", "mathrm", "mbox"):
        text = re.sub(rf"\\{command}\{{(.*?)\}}", r"\1", text)
    text = re.sub(r"\\boxed\{(.*)\}", r"\1", text)
    text = re.sub(r"(frac)([^{])(.)", r"frac{\2}{\3}", text)  # \frac12 -> \frac{1}{2}
    text = re.sub(r"(sqrt)([^{\[])", r"sqrt{\2}", text)  # \sqrt2 -> \sqrt{2}
    text = text.replace("$", "")
    if text.replace(",", "").isdigit():  # 1,000 -> 1000
        text = text.replace(",", "")
    return text


def is_equiv(prediction: str | None, gold: str) -> bool:
    """Whether a (raw) predicted answer equals the (raw) gold answer: equal Minerva-normalised strings, or equal
    as mathematics by math-verify when installed (intervals keep their brackets, 1/2 = \\frac{1}{2} = 0.5)."""
    if prediction is None:
        return False
    a, b = normalize_final_answer(prediction), normalize_final_answer(gold)
    if a and a == b:
        return True
    if _mv_verify is None or not a:
        return False
    try:
        return bool(_mv_verify(_mv_parse(f"${b}$"), _mv_parse(f"${a}$")))
    except Exception:  # noqa: BLE001  (a parser failure means "not shown equal", as Minerva's sympy check)
        return False


# ---------------------------------------------------------------------------------------------------------------
# data and scoring


@dataclass
class MinervaItem:
    """A MATH problem (Hendrycks et al. 2021): its prompt, the gold final answer as written, subject and level."""
    prompt: str
    answer: str  # the gold final answer, unnormalised
    subject: str
    level: str
    groups: list[str] = field(default_factory=list)


def _item(problem: str, answer: str | None, subject: str, level, where: str, shots: int) -> MinervaItem:
    if answer is None:
        raise UserError(f"{where}: solution: expected a \\boxed{{...}} final answer")
    level = level if str(level).startswith("Level") else f"Level {level}"
    return MinervaItem(fewshot_prompt(problem, shots), answer, subject, level, [subject, level])


def load_math(data_dir: Path, shots: int = 4) -> list[MinervaItem]:
    """The 5,000 MATH test problems, read from the archive (sorted by subject and problem number)."""
    path = find_data(data_dir, "math", ["math/MATH_test.tar.gz"])
    items = []
    with tarfile.open(path) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and re.search(r"/test/[^/]+/\d+\.json$", m.name)]
        members.sort(key=lambda m: (m.name.split("/")[-2], int(m.name.rsplit("/", 1)[1][:-5])))
        for m in members:
            try:
                doc = json.loads(tar.extractfile(m).read())
                items.append(_item(doc["problem"], last_boxed(doc["solution"]), doc["type"], doc["level"],
                                   f"{path}:{m.name}", shots))
            except (KeyError, ValueError):
                raise UserError(f"{path}:{m.name}: expected a MATH problem (problem, solution, type, level)") from None
    if not items:
        raise UserError(f"{path}: no MATH/test/<subject>/<n>.json files in the archive")
    return items


def load_math500(data_dir: Path, shots: int = 4) -> list[MinervaItem]:
    """PRM800K's 500-problem MATH test subset (MATH-500)."""
    path = find_data(data_dir, "math500", ["math/prm800k_math500_test.jsonl"])
    items = []
    for n, doc in read_jsonl(path):
        try:
            answer = doc.get("answer") or last_boxed(doc["solution"])
            items.append(_item(doc["problem"], answer, doc["subject"], doc["level"], f"{path}:{n}", shots))
        except KeyError as e:
            raise UserError(f"{path}:{n}: {e.args[0]}: expected problem, solution, subject, level") from None
    return items


def score_minerva_items(scorer, items: list[MinervaItem], samples: int = 1, temperature: float = 0.6,
                        max_new_tokens: int = 512, seed: int = 0) -> list[dict]:
    """Per item: maj@{samples} (1.0 when the majority answer is equivalent to the gold), the voted answer, groups.
    samples = 1 is greedy (maj1@1)."""
    prompts = [scorer.tokenizer.encode(it.prompt, bos=True) for it in items]
    completions = scorer.generate_many(prompts, STOP, max_new_tokens, temperature=temperature if samples > 1 else 0.0,
                                       num_samples=samples, seed=seed)
    out = []
    for it, texts in zip(items, completions):
        raw = [extract_answer(t) for t in texts]
        normalized = [None if r is None else normalize_final_answer(r) for r in raw]
        vote = majority(normalized)
        chosen = None if vote is None else raw[normalized.index(vote)]
        out.append({f"maj@{samples}": float(is_equiv(chosen, it.answer)), "prediction": chosen,
                    "groups": list(it.groups)})
    return out
