"""What every page calls a population, a measure, a flag and a drug: the one place their
display names and definitions are made.

Populations are named from the gating strategy as it ran (each gate's ``title:`` and its
parent's), so "transitional_b" prints as "Transitional B (CD24hi CD38hi CD27-, % of CD19+ B
cells)". Drugs and the clinical measures are named by the analysis plan (``stats.plan``,
study.yaml ``analysis: drug_names``). Flags, the pipeline's and the statistics' codes, are put
into words by ``flag_words`` from the table below. results/*.csv keep the codes; the pages
print the words."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from stats.plan import DEFAULT_DRUG_NAMES, MEASURE_TITLES

# The root of every strategy's tree: not a gate, so it has no title of its own.
ROOT_TITLES = {"qc_passed": "events passing QC", "root": "all events"}


def short_title(title: str) -> str:
    """A title without its parenthesised definition: 'Transitional B (CD24hi ...)' ->
    'Transitional B'; 'Lymphocytes (FSC/SSC)' -> 'Lymphocytes'."""
    return re.sub(r"\s*\([^()]*\)\s*$", "", title).strip() or title


def population_definition(title: str, parent_title: str) -> str:
    """The population with what it is a share of: 'Transitional B (CD24hi CD38hi CD27-, % of
    CD19+ B cells)', 'CD19+ B cells (% of lymphocytes)'."""
    parent = _lower_first(short_title(parent_title))
    if title.endswith(")") and "(" in title:
        return f"{title[:-1]}, % of {parent})"
    return f"{title} (% of {parent})"


def _lower_first(text: str) -> str:
    """'Lymphocytes' -> 'lymphocytes', 'Memory B' -> 'memory B' in running text; marker
    names (CD19+, HLA-DR+) and short cell names ('Treg') kept as written."""
    head = text.split(" ", 1)[0]
    if head[1:].islower() and (len(head) > 4 or " " in text):
        return text[0].lower() + text[1:]
    return text


@dataclass(frozen=True)
class Names:
    """Display names of one study: populations by (panel token, population), thresholds'
    markers by (panel token, threshold), drugs by class code; those of a sample gated with
    another strategy than the panel's current one in ``gated_with`` (sample id -> its
    names), so a result keeps the names it was gated under until it is gated again."""

    titles: dict[tuple[str, str], str] = field(default_factory=dict)
    parents: dict[tuple[str, str], str] = field(default_factory=dict)
    markers: dict[tuple[str, str], str] = field(default_factory=dict)
    drugs: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_DRUG_NAMES))
    gated_with: dict[str, Names] = field(default_factory=dict)

    @classmethod
    def of_strategies(cls, strategies: Mapping[str, Any], **others) -> Names:
        """The names given by strategies (panel token -> ``gating.strategy.Strategy``): each
        gate's title and parent, each threshold's marker."""
        return cls(
            titles={  # gates without a title: not reported, printed by their code
                (token, gate.name): gate.title
                for token, strategy in strategies.items()
                for gate in strategy.gates
                if gate.title
            },
            parents={
                (token, gate.name): gate.parent
                for token, strategy in strategies.items()
                for gate in strategy.gates
            },
            markers={
                (token, name): spec.dimension
                for token, strategy in strategies.items()
                for name, spec in strategy.thresholds.items()
            },
            **others,
        )

    def of_sample(self, sample_id: str) -> Names:
        """The names of the strategy this sample was gated with: these, unless it was gated
        with another one than the panel's current strategy."""
        return self.gated_with.get(sample_id, self)

    def title(self, panel: str, population: str) -> str:
        """A population's display title (its strategy ``title:``); its code when none."""
        if (panel, population) in self.titles:
            return self.titles[(panel, population)]
        return ROOT_TITLES.get(population, population)

    def short(self, panel: str, population: str) -> str:
        """The title without its marker definition: for table cells and panel titles."""
        return short_title(self.title(panel, population))

    def definition(self, panel: str, population: str) -> str:
        """'Transitional B (CD24hi CD38hi CD27-, % of CD19+ B cells)'."""
        parent = self.parents.get((panel, population))
        if parent is None:
            return self.title(panel, population)
        return population_definition(self.title(panel, population), self.title(panel, parent))

    def measure(self, measure: str, panel: str = "", population: str = "") -> str:
        """A measure as an axis or column says it: '% of CD19+ B cells' (the parent named),
        '% of lymphocytes', 'cells/µL'; the plan's title for any other measure."""
        parent = self.parents.get((panel, population))
        if measure == "pct_parent" and parent is not None:
            return f"% of {_lower_first(self.short(panel, parent))}"
        return MEASURE_TITLES.get(measure, measure)

    def drug(self, code: str) -> str:
        """A drug class's display name ('cni' -> 'calcineurin inhibitor'); the code if none."""
        return self.drugs.get(code, code)

    def glossary(self, panels: Iterable[str]) -> list[str]:
        """Every named population of these panels: definition, then its code in the CSVs."""
        lines = []
        for panel in panels:
            for (token, population), _ in self.titles.items():
                if token == panel:
                    lines.append(f"  {self.definition(panel, population)}  [{panel} {population}]")
        return lines

    def drift_subject(self, panel: str, key: str) -> str:
        """What a drift key follows, in words (``drift_subject``) with this panel's names:
        'CD24 boundary (t_cd24)', 'Transitional B, % of CD19+ B cells', 'IgD median of Naive B'
        (a drift item's subject and a row of the review's patient page)."""
        return drift_subject(
            key,
            population=lambda name: self.short(panel, name),
            marker=lambda name: self.markers.get((panel, name)),
            share=lambda name: self.measure("pct_parent", panel, name),
        )

    def flag(self, panel: str, flag: str) -> str:
        """A flag code in words (``flag_words``), populations and markers of ``panel`` named."""
        return flag_words(
            flag,
            population=lambda name: self.short(panel, name),
            marker=lambda name: self.markers.get((panel, name)),
        )

    def drift(self, panel: str, key: str, move: float | None = None, z: float | None = None) -> str:
        """A drift item (``stats.drift`` key) in words: 'drift: CD24 boundary (t_cd24) moved
        +0.21 from this patient's other visits (z +4.3)'."""
        subject = self.drift_subject(panel, key)
        if move is None or z is None:
            return f"drift: {subject} off this patient's other visits"
        return f"drift: {subject} moved {move:+.3g} from this patient's other visits (z {z:+.1f})"


def drift_subject(
    key: str,
    *,
    population: Callable[[str], str] = str,
    marker: Callable[[str], str | None] = lambda name: None,
    share: Callable[[str], str] = lambda name: "% of parent",
) -> str:
    """What a drift key (``stats.drift``, the review's patient page) follows, in words:
    'threshold t_cd24' -> 'CD24 boundary (t_cd24)'; 'threshold treg edge CD25' -> 'Treg gate's
    CD25 edge'; '% transitional_b' -> 'Transitional B, % of CD19+ B cells' (``share`` names
    the parent); 'median naive_b IgD' -> 'IgD median of Naive B'. An unknown key prints as
    written."""
    kind, _, rest = key.partition(" ")
    if kind == "threshold":
        name, _, axis = rest.partition(" edge ")
        if axis:
            return f"{population(name)} gate's {axis} edge"
        return _boundary(marker(name), name)
    if kind == "%" and rest:
        return f"{population(rest)}, {share(rest)}"
    if kind == "median" and " " in rest:
        name, _, channel = rest.rpartition(" ")
        return f"{channel} median of {population(name)}"
    return key


def _split(flag: str) -> tuple[str, str]:
    family, _, detail = flag.partition(":")
    return family, detail


def _boundary(marker: str | None, threshold: str) -> str:
    return f"{marker} boundary ({threshold})" if marker else f"boundary {threshold}"


def _not_measured(detail: str, population: Callable[[str], str]) -> str:
    name, _, lacking = detail.partition("(")
    markers = lacking.rstrip(")").replace("+", ", ")
    return f"{population(name)} not measured: the tube lacks {markers or 'a marker it needs'}"


def _low_count(detail: str, population: Callable[[str], str]) -> str:
    name, _, floor = detail.partition("<")
    return f"{population(name)}: fewer than {floor or 'the minimum of'} events"


def _qc_removed(detail: str) -> str:
    share, _, limit = detail.partition(">")
    return f"QC removed {share} of the events (more than the {limit} allowed)"


# Each flag family (the code before ':') in words: a function of the part after ':', the
# population namer and the threshold -> marker lookup. Codes are written in gating/pipeline.py,
# gating/qc.py, flows/sample_work.py (reader:) and stats/ (the model flags).
FLAG_FAMILIES: dict[str, Callable[[str, Callable, Callable], str]] = {
    "needs_review": lambda d, p, m: "needs review before release",
    "default_threshold": lambda d, p, m: (
        f"{_boundary(m(d), d)} at its default: no separation in the data"
    ),
    "below_separation_floor": lambda d, p, m: (
        f"{_boundary(m(d), d)}: a separation too weak to place it; at its default"
        if m(d)  # a threshold falls back to its template or default
        else f"{p(d)} gate at a boundary too weak to measure (below the separation floor)"
    ),
    "default_gate": lambda d, p, m: f"{p(d)} gate at its default: the data did not place it",
    "not_measured": lambda d, p, m: _not_measured(d, p),
    "low_count": lambda d, p, m: _low_count(d, p),
    "qc_removed": lambda d, p, m: _qc_removed(d),
    "skipped": lambda d, p, m: f"steps not run on this file: {d.replace(',', ', ')}",
    "entered_at": lambda d, p, m: f"the file is an export of {p(d)} (already gated)",
    "no_time_channel": lambda d, p, m: "no time channel: the flow-rate QC was not run",
    "no_pulse_height_or_width": lambda d, p, m: (
        "no pulse height or width channel: doublets not removed"
    ),
    "no_spillover_keyword": lambda d, p, m: (
        "no spillover matrix in the file: compensated in FlowJo before export (FJComp- channels)"
        if d == "compensated_by_flowjo"
        else "no spillover matrix in the file: not compensated"
    ),
    "reader": lambda d, p, m: f"file read with a repair: {d}",
    "monotone_likelihood": lambda d, p, m: (
        "no maximum-likelihood estimate (monotone likelihood: the data separate the windows)"
    ),
    "zero_cell": lambda d, p, m: "a zero cell: the odds ratio is 0 or infinite",
    "all_one_sign": lambda d, p, m: (
        "every difference has one sign: p is the smallest the test can give"
    ),
}
# The model flags' short form, for a table's flag column.
FLAG_SHORT = {
    "monotone_likelihood": "no MLE (separation)",
    "zero_cell": "zero cell",
    "all_one_sign": "all one sign",
}


def flag_words(
    flag: str,
    *,
    population: Callable[[str], str] = str,
    marker: Callable[[str], str | None] = lambda name: None,
) -> str:
    """A flag code in words: 'default_threshold:t_cd24' -> 'CD24 boundary (t_cd24) at its
    default: no separation in the data'; 'low_count:plasmablasts<50' -> 'Plasmablasts: fewer
    than 50 events'. An unknown code prints as written."""
    family, detail = _split(flag.strip())
    words = FLAG_FAMILIES.get(family)
    return words(detail, population, marker) if words else flag


def flag_short(flag: str) -> str:
    """A model flag in a few words for a table column; the others in full."""
    return FLAG_SHORT.get(flag, flag_words(flag)) if flag else ""
