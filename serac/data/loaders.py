"""Loaders that turn public edit benchmarks into :class:`~serac.data.schema.EditExample` lists.

* :func:`load_mquake`: MQuAKE (the multi-hop counterfactual benchmark; one example per requested rewrite);
* :func:`load_zsre`: zsRE question-answering edits in the MEND/ROME JSON format;
* :func:`load_counterfact`: CounterFact (ROME);
* :func:`load_examples_jsonl` / :func:`save_examples_jsonl`: this package's own schema, one example a line;
* :func:`load_examples`: any of the above from a ``"kind:path"`` string, as the training CLI takes it.

Users bring the benchmark files themselves; nothing here downloads.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serac.data.schema import EditExample, InScopeQuery, OutOfScopeQuery, PortabilityQuestion
from serac.edits import Edit, normalize_text

logger = logging.getLogger(__name__)

__all__ = [
    "DATA_KINDS",
    "load_counterfact",
    "load_examples",
    "load_examples_jsonl",
    "load_mquake",
    "load_zsre",
    "save_examples_jsonl",
]

#: The ``kind`` prefixes :func:`load_examples` understands.
DATA_KINDS: tuple[str, ...] = ("synthetic", "mquake", "zsre", "counterfact", "jsonl")

_ZSRE_LOC_PREFIX = "nq question:"


def _read_records(path: str | os.PathLike) -> list[Any]:
    """A JSON list, or JSON lines."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such data file: {path}")
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if not stripped:
        return []
    if stripped.startswith("["):
        records = json.loads(text)
    else:
        try:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is neither a JSON list nor JSON lines: {error}") from error
    if not isinstance(records, list):
        raise ValueError(f"{path} must hold a JSON list of records, got {type(records).__name__}")
    return records


def _convert_all(
    path: str | os.PathLike,
    records: Sequence[Any],
    convert: Callable[[int, Any], list[EditExample]],
    skip_invalid: bool,
) -> list[EditExample]:
    examples: list[EditExample] = []
    skipped = 0
    for index, record in enumerate(records):
        try:
            if not isinstance(record, dict):
                raise TypeError(f"a record must be a JSON object, got {type(record).__name__}")
            examples.extend(convert(index, record))
        except (KeyError, TypeError, ValueError) as error:
            if not skip_invalid:
                raise ValueError(f"{path}: record {index} is malformed: {error!r}") from error
            skipped += 1
            logger.warning("%s: skipping malformed record %d: %r", path, index, error)
    if skipped:
        logger.warning("%s: skipped %d malformed records of %d", path, skipped, len(records))
    logger.info("Loaded %d edit examples from %s", len(examples), path)
    return examples


def _string_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [item for item in value if isinstance(item, str) and item.strip()]


def _prompt_edit(prompt: str, subject: str | None, target: str) -> Edit:
    """An edit from a dataset prompt, dropping a subject the prompt does not mention (zsRE has a few)."""
    if subject is not None and "{}" not in prompt and subject not in prompt:
        subject = None
    return Edit(prompt=prompt, subject=subject, target=target)


def _dedupe_in_scope(queries: Iterable[InScopeQuery]) -> tuple[InScopeQuery, ...]:
    seen: set[str] = set()
    kept = []
    for query in queries:
        key = normalize_text(query.text)
        if key not in seen:
            seen.add(key)
            kept.append(query)
    return tuple(kept)


def _dedupe_out_of_scope(
    queries: Iterable[OutOfScopeQuery], in_scope: Sequence[InScopeQuery]
) -> tuple[OutOfScopeQuery, ...]:
    seen = {normalize_text(query.text) for query in in_scope}
    kept = []
    for query in queries:
        key = normalize_text(query.text)
        if key not in seen:
            seen.add(key)
            kept.append(query)
    return tuple(kept)


def _relation_kind(
    subject: str | None,
    relation: str | None,
    other_subject: str | None,
    other_relation: str | None,
    default: str,
) -> str | None:
    """How an out-of-scope fact relates to the edited one; ``None`` when it is the edited fact itself."""
    same_subject = subject is not None and other_subject is not None and subject == other_subject
    same_relation = relation is not None and other_relation is not None and relation == other_relation
    if same_subject and same_relation:
        return None
    if same_subject:
        return "same_subject_other_relation"
    if same_relation:
        return "same_relation_other_subject"
    return default


# --------------------------------------------------------------------------------------------- MQuAKE


@dataclass(frozen=True)
class _Hop:
    """One single-hop fact of an MQuAKE case whose answer is the real-world one."""

    case_index: int
    question: str
    cloze: str
    answer: str
    aliases: tuple[str, ...]
    subject: str | None
    relation: str | None


def _hop_fact(case: dict, triples_key: str, labeled_key: str, index: int) -> tuple[str | None, str | None]:
    """(subject label, relation id) of hop ``index`` from the case's ``orig`` triples, if present."""
    orig = case.get("orig") or {}
    try:
        subject = orig[labeled_key][index][0]
    except (KeyError, IndexError, TypeError):
        subject = None
    try:
        relation = orig[triples_key][index][1]
    except (KeyError, IndexError, TypeError):
        relation = None
    return subject, relation


def _mquake_hops(case_index: int, case: dict) -> tuple[list[_Hop], set[int]]:
    """The case's hops with real-world answers, and the indices of its hops the rewrites change."""
    rewrite_questions = {normalize_text(rewrite["question"]) for rewrite in case["requested_rewrite"]}
    touched = {
        index
        for index, hop in enumerate(case["new_single_hops"])
        if normalize_text(hop["question"]) in rewrite_questions
    }
    hops = []
    for index, hop in enumerate(case["single_hops"]):
        subject, relation = _hop_fact(case, "triples", "triples_labeled", index)
        hops.append(
            _Hop(case_index, hop["question"], hop["cloze"], hop["answer"], tuple(_string_list(hop.get("answer_alias"))),
                 subject, relation)
        )  # fmt: skip
    for index, hop in enumerate(case["new_single_hops"]):
        if index in touched:
            continue
        # An untouched hop of the edited chain is a real-world fact about an entity the edit leads to.
        subject, relation = _hop_fact(case, "new_triples", "new_triples_labeled", index)
        hops.append(
            _Hop(case_index, hop["question"], hop["cloze"], hop["answer"], tuple(_string_list(hop.get("answer_alias"))),
                 subject, relation)
        )  # fmt: skip
    return hops, touched


def load_mquake(
    path: str | os.PathLike,
    *,
    other_case_queries: int = 6,
    seed: int = 0,
    skip_invalid: bool = False,
) -> list[EditExample]:
    """Load MQuAKE (e.g. ``MQuAKE-CF.json``): one :class:`EditExample` per requested rewrite.

    * edit: the rewrite's ``prompt`` with its ``subject`` -> ``target_new``; ``fact_new`` is its statement;
    * in-scope: the edit's own prompt, the rewrite's ``question``, and the cloze and question of the
      matching hop of ``new_single_hops`` (answer ``target_new``, aliases of that hop);
    * out-of-scope: this case's hops the edit does not touch (``single_hops`` and ``new_single_hops``,
      kind by shared subject/relation, else ``other_hop``), plus up to ``other_case_queries`` hops of other
      cases, about half of them sharing the edit's subject or relation when such hops exist;
    * portability: the case's multi-hop ``questions`` with ``new_answer``/``new_answer_alias``; they need
      all of the case's rewrites, so the other rewrites are the example's ``companion_edits``.

    Args:
        path: a JSON list of MQuAKE cases (or JSON lines).
        other_case_queries: out-of-scope queries drawn from other cases per edit.
        seed: seeds the choice of those queries.
        skip_invalid: log and skip malformed cases instead of raising ``ValueError``.
    """
    if other_case_queries < 0:
        raise ValueError(f"other_case_queries must be >= 0, got {other_case_queries}")
    records = _read_records(path)
    cases: list[dict] = []
    pool: list[_Hop] = []
    for case_index, case in enumerate(records):
        try:
            if not isinstance(case, dict):
                raise TypeError(f"a case must be a JSON object, got {type(case).__name__}")
            for key in ("requested_rewrite", "single_hops", "new_single_hops"):
                if not isinstance(case.get(key), list):
                    raise KeyError(f"missing list {key!r}")
            hops, _ = _mquake_hops(case_index, case)
        except (KeyError, TypeError, ValueError) as error:
            if not skip_invalid:
                raise ValueError(f"{path}: record {case_index} is malformed: {error!r}") from error
            logger.warning("%s: skipping malformed record %d: %r", path, case_index, error)
            cases.append({})
            continue
        cases.append(case)
        pool.extend(hops)

    # Other cases' hops, deduplicated, indexed by subject and relation to find the hard ones quickly.
    unique_pool: dict[str, _Hop] = {}
    for hop in pool:
        unique_pool.setdefault(normalize_text(hop.question), hop)
    pool = list(unique_pool.values())
    by_subject: dict[str, list[_Hop]] = defaultdict(list)
    by_relation: dict[str, list[_Hop]] = defaultdict(list)
    for hop in pool:
        if hop.subject is not None:
            by_subject[hop.subject].append(hop)
        if hop.relation is not None:
            by_relation[hop.relation].append(hop)

    def convert(case_index: int, case: dict) -> list[EditExample]:
        if not case:
            return []
        _, touched = _mquake_hops(case_index, case)
        rewrites = case["requested_rewrite"]
        edits = [
            _prompt_edit(rewrite["prompt"], rewrite["subject"], rewrite["target_new"]["str"])
            for rewrite in rewrites
        ]
        portability = tuple(
            PortabilityQuestion(
                question, case["new_answer"], tuple(_string_list(case.get("new_answer_alias")))
            )
            for question in _string_list(case.get("questions"))
        )
        examples = []
        for rewrite_index, (rewrite, edit) in enumerate(zip(rewrites, edits, strict=True)):
            subject, relation = rewrite["subject"], rewrite.get("relation_id")
            target = rewrite["target_new"]["str"]
            own_hop = next(
                (
                    index
                    for index, hop in enumerate(case["new_single_hops"])
                    if normalize_text(hop["question"]) == normalize_text(rewrite["question"])
                ),
                None,
            )
            aliases = (
                tuple(_string_list(case["new_single_hops"][own_hop].get("answer_alias")))
                if own_hop is not None
                else ()
            )
            in_scope = [
                InScopeQuery(edit.query, target, aliases, "edit"),
                InScopeQuery(rewrite["question"], target, aliases, "question"),
            ]
            if own_hop is not None:
                hop = case["new_single_hops"][own_hop]
                in_scope += [
                    InScopeQuery(hop["cloze"], target, aliases, "cloze"),
                    InScopeQuery(hop["question"], target, aliases, "question"),
                ]
            in_scope = _dedupe_in_scope(in_scope)

            out_of_scope: list[OutOfScopeQuery] = []
            for hops_key, triples_key, labeled_key in (
                ("single_hops", "triples", "triples_labeled"),
                ("new_single_hops", "new_triples", "new_triples_labeled"),
            ):
                for index, hop in enumerate(case[hops_key]):
                    if hops_key == "new_single_hops" and index == own_hop:
                        continue
                    hop_subject, hop_relation = _hop_fact(case, triples_key, labeled_key, index)
                    kind = _relation_kind(subject, relation, hop_subject, hop_relation, "other_hop")
                    if kind is None:
                        continue
                    # A hop another rewrite of this case changes has an unknown answer without that rewrite.
                    known = hops_key == "single_hops" or index not in touched
                    answer = hop["answer"] if known else None
                    hop_aliases = tuple(_string_list(hop.get("answer_alias"))) if known else ()
                    for text in (hop["question"], hop["cloze"]):
                        out_of_scope.append(OutOfScopeQuery(text, kind, answer, hop_aliases))

            rng = random.Random(f"mquake:{seed}:{case_index}:{rewrite_index}")
            candidates_hard = [
                hop
                for hop in (*by_subject.get(subject, ()), *by_relation.get(relation, ()))
                if hop.case_index != case_index
            ]
            hard = _sample_hops(
                rng, candidates_hard, other_case_queries // 2 if other_case_queries > 1 else 0
            )
            easy = _sample_hops(
                rng,
                [hop for hop in pool if hop.case_index != case_index],
                other_case_queries - len(hard),
                hard,
            )
            for hop in (*hard, *easy):
                kind = _relation_kind(subject, relation, hop.subject, hop.relation, "unrelated")
                if kind is None:
                    continue
                text = hop.question if rng.random() < 0.5 else hop.cloze
                out_of_scope.append(OutOfScopeQuery(text, kind, hop.answer, hop.aliases))

            examples.append(
                EditExample(
                    edit=edit,
                    in_scope=in_scope,
                    out_of_scope=_dedupe_out_of_scope(out_of_scope, in_scope),
                    portability=portability,
                    statement=rewrite.get("fact_new") or None,
                    companion_edits=tuple(
                        other for other_index, other in enumerate(edits) if other_index != rewrite_index
                    ),
                    source="mquake",
                    case_id=str(case.get("case_id", case_index)),
                    relation=relation,
                    true_answer=(rewrite.get("target_true") or {}).get("str"),
                )
            )
        return examples

    return _convert_all(path, cases, convert, skip_invalid)


def _sample_hops(
    rng: random.Random, hops: list[_Hop], count: int, exclude: Sequence[_Hop] = ()
) -> list[_Hop]:
    excluded = {id(hop) for hop in exclude}
    unique: dict[int, _Hop] = {}
    for hop in hops:
        if id(hop) not in excluded:
            unique.setdefault(id(hop), hop)
    candidates = list(unique.values())
    if count <= 0 or not candidates:
        return []
    return rng.sample(candidates, min(count, len(candidates)))


# ----------------------------------------------------------------------------------------------- zsRE


def _zsre_question(text: str) -> str:
    text = text.strip()
    if text.lower().startswith(_ZSRE_LOC_PREFIX):
        text = text[len(_ZSRE_LOC_PREFIX) :].strip()
    if text and text[-1] not in "?.!":
        text += "?"
    return text


def load_zsre(path: str | os.PathLike, *, skip_invalid: bool = False) -> list[EditExample]:
    """Load zsRE edits in the MEND/ROME format (``zsre_mend_eval.json``, ``zsre_mend_train.json``).

    Each record has ``src`` (the question), ``subject``, ``rephrase`` (a paraphrase, or a list of them),
    ``alt`` (the new answer), ``answers`` (the answers before the edit), ``loc`` ("nq question: ...", an
    unrelated Natural Questions question) and ``loc_ans``.

    * edit: ``src`` -> ``alt`` (``subject`` kept when ``src`` mentions it);
    * in-scope: ``src`` (kind ``edit``) and each ``rephrase`` (kind ``paraphrase``), answer ``alt``;
    * out-of-scope: ``loc`` without its "nq question:" prefix (kind ``unrelated``), answer ``loc_ans``.
    """

    def convert(index: int, record: dict) -> list[EditExample]:
        source_question = record["src"]
        target = record["alt"]
        if not isinstance(target, str) or not target.strip():
            raise ValueError("empty 'alt' (the new answer)")
        edit = _prompt_edit(source_question, record.get("subject"), target)
        in_scope = [InScopeQuery(edit.query, target, (), "edit")]
        in_scope += [
            InScopeQuery(text, target, (), "paraphrase") for text in _string_list(record.get("rephrase"))
        ]
        in_scope += [
            InScopeQuery(text, target, (), "paraphrase") for text in _string_list(record.get("rephrases"))
        ]
        in_scope = _dedupe_in_scope(in_scope)
        out_of_scope = []
        if record.get("loc"):
            out_of_scope.append(
                OutOfScopeQuery(_zsre_question(record["loc"]), "unrelated", record.get("loc_ans") or None)
            )
        true_answers = _string_list(record.get("answers"))
        return [
            EditExample(
                edit=edit,
                in_scope=in_scope,
                out_of_scope=_dedupe_out_of_scope(out_of_scope, in_scope),
                source="zsre",
                case_id=str(record.get("case_id", index)),
                true_answer=true_answers[0] if true_answers else None,
            )
        ]

    return _convert_all(path, _read_records(path), convert, skip_invalid)


# ---------------------------------------------------------------------------------------- CounterFact


def _prompt_text(item: Any) -> str:
    # CounterFact's prompts are strings; the zsRE-as-CounterFact conversion stores {"prompt", "target"}.
    if isinstance(item, dict):
        return item["prompt"]
    if not isinstance(item, str):
        raise TypeError(f"a prompt must be a string, got {type(item).__name__}")
    return item


def load_counterfact(path: str | os.PathLike, *, skip_invalid: bool = False) -> list[EditExample]:
    """Load CounterFact (ROME's ``counterfact.json``).

    * edit: ``requested_rewrite`` (``prompt`` with ``subject`` -> ``target_new``); its statement is the
      filled prompt followed by the target;
    * in-scope: the edit's prompt (kind ``edit``), ``paraphrase_prompts`` (kind ``paraphrase``) and
      ``generation_prompts`` (kind ``generation``: open prompts, no exact answer to check);
    * out-of-scope: ``neighborhood_prompts`` (other subjects with the same relation and the same true
      object; answer ``target_true``) and ``attribute_prompts`` (other subjects with the same relation
      whose object is ``target_new``; answer ``target_new``), both of kind ``same_relation_other_subject``.
    """

    def convert(index: int, record: dict) -> list[EditExample]:
        rewrite = record["requested_rewrite"]
        if isinstance(rewrite, list):  # MQuAKE-style lists of one rewrite appear in some conversions
            if len(rewrite) != 1:
                raise ValueError(f"expected one requested_rewrite, got {len(rewrite)}")
            rewrite = rewrite[0]
        target = rewrite["target_new"]["str"]
        true_answer = (rewrite.get("target_true") or {}).get("str") or None
        edit = _prompt_edit(rewrite["prompt"], rewrite.get("subject"), target)
        in_scope = [InScopeQuery(edit.query, target, (), "edit")]
        in_scope += [
            InScopeQuery(_prompt_text(p), target, (), "paraphrase")
            for p in record.get("paraphrase_prompts") or ()
        ]
        in_scope += [
            InScopeQuery(_prompt_text(p), target, (), "generation")
            for p in record.get("generation_prompts") or ()
        ]
        in_scope = _dedupe_in_scope(in_scope)
        out_of_scope = [
            OutOfScopeQuery(_prompt_text(p), "same_relation_other_subject", true_answer)
            for p in record.get("neighborhood_prompts") or ()
        ]
        out_of_scope += [
            OutOfScopeQuery(_prompt_text(p), "same_relation_other_subject", target)
            for p in record.get("attribute_prompts") or ()
        ]
        return [
            EditExample(
                edit=edit,
                in_scope=in_scope,
                out_of_scope=_dedupe_out_of_scope(out_of_scope, in_scope),
                statement=f"{edit.query} {target}.",
                source="counterfact",
                case_id=str(record.get("case_id", index)),
                relation=rewrite.get("relation_id"),
                true_answer=true_answer,
            )
        ]

    return _convert_all(path, _read_records(path), convert, skip_invalid)


# ------------------------------------------------------------------------------------- own JSON lines


def save_examples_jsonl(examples: Iterable[EditExample], path: str | os.PathLike) -> Path:
    """Write examples in this package's schema, one JSON object a line (read back by :func:`load_examples_jsonl`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for example in examples:
            handle.write(json.dumps(example.to_dict(), ensure_ascii=False, sort_keys=True) + "\n")
    return path


def load_examples_jsonl(path: str | os.PathLike, *, skip_invalid: bool = False) -> list[EditExample]:
    """Read examples written by :func:`save_examples_jsonl`."""
    return _convert_all(
        path, _read_records(path), lambda _, record: [EditExample.from_dict(record)], skip_invalid
    )


# ------------------------------------------------------------------------------------------- dispatch


def load_examples(spec: str, *, seed: int = 0) -> list[EditExample]:
    """Load examples from a ``"kind:path"`` string, as ``serac train --data`` takes it.

    ``synthetic`` or ``synthetic:N`` (N examples, default 2000) uses the built-in generator; ``mquake:PATH``,
    ``zsre:PATH``, ``counterfact:PATH`` and ``jsonl:PATH`` read files.

    Example:
        >>> len(load_examples("synthetic:10", seed=0))
        10
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError("a data spec must be a non-empty string such as 'synthetic' or 'mquake:PATH'")
    kind, _, argument = spec.strip().partition(":")
    kind = kind.lower()
    if kind == "synthetic":
        from serac.data.synthetic import generate_synthetic_examples

        try:
            count = int(argument) if argument else 2000
        except ValueError as error:
            raise ValueError(f"'synthetic:N' needs an integer N, got {argument!r}") from error
        return generate_synthetic_examples(count, seed=seed)
    loaders: dict[str, Callable[..., list[EditExample]]] = {
        "mquake": lambda path: load_mquake(path, seed=seed),
        "zsre": load_zsre,
        "counterfact": load_counterfact,
        "jsonl": load_examples_jsonl,
    }
    if kind not in loaders:
        raise ValueError(f"unknown data kind {kind!r} in {spec!r}; expected one of {DATA_KINDS}")
    if not argument:
        raise ValueError(f"{kind!r} data needs a path: '{kind}:PATH'")
    return loaders[kind](argument)
