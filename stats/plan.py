"""The study's declared analysis plan (study.yaml ``analysis:``): the groups compared, the
endpoints tested, the families of the Benjamini-Hochberg adjustment, the clinical analyses and
how each test is computed. The one place these are spelled; every analysis reads them here."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from stats.tests import SignedRankRule

Measure = Literal["pct_parent", "pct_lymphocytes", "cells_per_ul"]
FamilyKey = Literal["group", "panel", "measure", "population", "visit"]
ClinicalAnalysis = Literal[
    "relapses_before_after",
    "drugs_baseline_12m",
    "prednisone_before_after",
    "relapse_free_cox",
    "drug_use_fisher",
    "drug_use_mcnemar",
]


class GroupSpec(BaseModel):
    """A group of patients analysed together: its name in statistics.csv, its title in the
    report, and the patients.csv ``group`` values it takes in."""

    model_config = ConfigDict(extra="forbid")

    name: str
    title: str
    patients: list[str] = Field(min_length=1)


class SignedRankSpec(BaseModel):
    """How the Wilcoxon signed-rank test is computed (see ``stats.tests.SignedRankRule``)."""

    model_config = ConfigDict(extra="forbid")

    exact_below: int = Field(default=50, ge=1)
    enumerate_up_to: int = Field(default=20, ge=1, le=24)
    zero_method: Literal["wilcox", "pratt"] = "wilcox"

    def rule(self) -> SignedRankRule:
        return SignedRankRule(self.exact_below, self.enumerate_up_to, self.zero_method)


class PrimaryPSpec(BaseModel):
    """Which p-value of each model is the primary one (statistics.csv ``primary``).

    For a Cox model whose ordinary maximum-likelihood estimate does not exist (monotone
    likelihood), 'wald' and 'likelihood_ratio' fall to Firth's penalised likelihood-ratio
    test, and the row says so: a Wald p at a diverging estimate is meaningless."""

    model_config = ConfigDict(extra="forbid")

    cox_unmatched: Literal["likelihood_ratio", "wald", "firth"] = "likelihood_ratio"
    cox_stratified: Literal["exact_conditional", "likelihood_ratio", "wald", "firth"] = (
        "exact_conditional"
    )
    drug_use: Literal["mcnemar", "fisher"] = "mcnemar"


class Figure4Part(BaseModel):
    """One part of the paper's Figure 4: populations of one panel, in one measure."""

    model_config = ConfigDict(extra="forbid")

    title: str
    panel: str
    populations: list[str] = Field(min_length=1)
    measure: Measure


class Figure4Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    group: str = "child"
    parts: list[Figure4Part] = Field(
        default_factory=lambda: [
            Figure4Part(
                title="total, transitional, mature naive and memory B cells",
                panel="BCELL",
                populations=["cd19_b", "transitional_b", "naive_b", "memory_b"],
                measure="cells_per_ul",
            ),
            Figure4Part(
                title="Treg, memory Treg and HLA-DR+ memory Treg",
                panel="TREG",
                populations=["treg", "memory_treg", "hladr_memory_treg"],
                measure="pct_parent",
            ),
        ]
    )


DEFAULT_GROUPS = [
    GroupSpec(name="all", title="All patients", patients=["child", "adult"]),
    GroupSpec(name="child", title="Children", patients=["child"]),
    GroupSpec(name="adult", title="Adults", patients=["adult"]),
]
DEFAULT_PATIENT_GROUPS = ("child", "adult")  # patients.csv group values of the default plan

# Display names of the drug classes counted (cohort.clinical.DRUG_CLASS); study.yaml
# ``analysis: drug_names`` adds or overrides entries. A class not named prints as its code.
DEFAULT_DRUG_NAMES = {
    "prednisone": "prednisone or equivalent",
    "mmf": "mycophenolate mofetil",
    "cni": "calcineurin inhibitor",
    "rituximab": "rituximab",
}
# What each measure of statistics.csv is, as axes and columns say it (``pct_parent`` names
# its parent population where the page knows it: reports.names).
MEASURE_TITLES = {
    "pct_parent": "% of parent",
    "pct_lymphocytes": "% of lymphocytes",
    "cells_per_ul": "cells/µL",
    "relapses_per_year": "relapses per 365 days of observation",
    "relapse_rate_ratio_after_vs_before": "ratio of relapse rates (every relapse), after vs before",
    "n_immunosuppressive_drugs": "number of immunosuppressive drugs",
    "prednisone_mg_per_year": "prednisone, mg per 365 days of observation",
    "hazard_ratio_after_vs_before": "hazard ratio of a first relapse, after vs before",
    "median_days_before": "median days to a first relapse, window before infusion",
    "median_days_after": "median days to a first relapse, window after infusion",
}
# The analyses (statistics.csv ``analysis``) and tests (``test``) in words.
ANALYSIS_TITLES = {
    "wilcoxon_vs_baseline": "Visit vs baseline, paired Wilcoxon signed-rank",
    "relapses_before_after": "Relapses, 12 months before vs after infusion",
    "drugs_baseline_12m": "Immunosuppressive drugs, infusion day vs +12 months",
    "prednisone_before_after": "Prednisone dose, 12 months before vs after infusion",
    "relapse_free_cox_unmatched": "Relapse-free survival: Cox, windows unmatched",
    "relapse_free_cox_stratified": "Relapse-free survival: Cox, stratified by patient",
    "kaplan_meier_median": "Relapse-free survival: Kaplan-Meier medians",
    "drug_use_fisher": "On the drug, baseline vs +12 months: Fisher's exact test",
    "drug_use_mcnemar": "On the drug, baseline vs +12 months: exact McNemar test",
}
TEST_TITLES = {
    "signed_rank_exact": "Wilcoxon, exact",
    "signed_rank_permutation": "Wilcoxon, exact permutation",
    "signed_rank_normal_cc": "Wilcoxon, normal approx.",
    "cox_wald": "Cox ML, Wald",
    "cox_likelihood_ratio": "Cox ML, likelihood ratio",
    "cox_firth": "Firth penalised",
    "cox_exact_conditional": "exact conditional (pairs)",
    "fisher_exact": "Fisher's exact",
    "mcnemar_exact": "McNemar's exact",
    "mcnemar_conditional_or": "McNemar, paired OR b/c",
    "kaplan_meier": "Kaplan-Meier",
    "conditional_poisson_exact": "conditional Poisson, exact",
    "not_tested": "not tested",
}


class AnalysisPlan(BaseModel):
    """study.yaml ``analysis:``; every key has the trial's default."""

    model_config = ConfigDict(extra="forbid")

    groups: list[GroupSpec] = Field(default_factory=lambda: list(DEFAULT_GROUPS), min_length=1)
    measures: list[Measure] = Field(
        default_factory=lambda: ["pct_parent", "pct_lymphocytes", "cells_per_ul"], min_length=1
    )
    # Populations reported but not tested: QC gates, not endpoints.
    not_endpoints: list[str] = Field(default_factory=lambda: ["lymphocytes"])
    # The Benjamini-Hochberg family of a visit-vs-baseline test: the tests sharing these keys.
    family: list[FamilyKey] = Field(default_factory=lambda: ["group", "panel", "measure"])
    signed_rank: SignedRankSpec = Field(default_factory=SignedRankSpec)
    primary_p: PrimaryPSpec = Field(default_factory=PrimaryPSpec)
    clinical: list[ClinicalAnalysis] = Field(
        default_factory=lambda: [
            "relapses_before_after",
            "drugs_baseline_12m",
            "prednisone_before_after",
            "relapse_free_cox",
            "drug_use_fisher",
            "drug_use_mcnemar",
        ]
    )

    # Visit windows: a follow-up visit within this many days of its scheduled day (months x
    # 30.44 after the first infusion); baseline at most this many days before the infusion
    # and never after it.
    visit_window_days: float = Field(default=14.0, gt=0)
    baseline_window_days: float = Field(default=60.0, gt=0)
    # The trial paper's Figure 4: one group, its B-cell subsets and its Treg subsets.
    figure_4: Figure4Spec = Field(default_factory=lambda: Figure4Spec())
    # Display names of drug classes, over DEFAULT_DRUG_NAMES (e.g. {cni: "tacrolimus"}).
    drug_names: dict[str, str] = Field(default_factory=dict)

    @field_validator("groups")
    @classmethod
    def _unique_names(cls, groups: list[GroupSpec]) -> list[GroupSpec]:
        names = [g.name for g in groups]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"group name(s) used twice: {', '.join(repeated)}")
        return groups

    @model_validator(mode="after")
    def _figure_group_is_a_group(self) -> AnalysisPlan:
        if self.figure_4.group not in {g.name for g in self.groups}:
            raise ValueError(f"figure_4.group {self.figure_4.group!r} is not one of the groups")
        return self

    @property
    def drugs(self) -> dict[str, str]:
        """Every drug class's display name: the defaults, overridden by study.yaml."""
        return {**DEFAULT_DRUG_NAMES, **self.drug_names}

    @property
    def group_titles(self) -> dict[str, str]:
        return {g.name: g.title for g in self.groups}

    def members(self, group: str, patient_groups: dict[str, str]) -> set[str]:
        """The patients of a plan group, from patient_id -> patients.csv group."""
        spec = next(g for g in self.groups if g.name == group)
        return {p for p, g in patient_groups.items() if g in spec.patients}

    def describe(self) -> list[str]:
        """The plan in words, for the report's Methods page."""
        rule = self.signed_rank
        return [
            "Groups: "
            + "; ".join(f"{g.name} = {g.title} ({', '.join(g.patients)})" for g in self.groups),
            f"Endpoints: every population but {', '.join(self.not_endpoints) or 'none'} "
            f"(QC gates), as {', '.join(self.measures)}.",
            "Design: a single-arm phase I trial; every comparison is within patients (each "
            "visit against baseline, each patient's 12 months after infusion against the 12 "
            "before), with no control group, so a change cannot be told from the natural "
            "course or from regression to the mean (patients are enrolled while relapsing "
            "often); every p-value is exploratory and descriptive, none confirmatory.",
            f"Multiplicity: the visit-vs-baseline tests are exploratory (the plan names no "
            f"primary immunological endpoint); each is printed with its unadjusted p and its "
            f"Benjamini-Hochberg adjusted p (false discovery rate) within its family, the tests "
            f"sharing {' x '.join(self.family)} (all visits and populations of it); box-plot "
            f"stars are unadjusted. Clinical analyses are not adjusted.",
            f"Wilcoxon signed-rank, two-sided: exact distribution below {rule.exact_below} "
            f"non-zero pairs without ties; with ties or zeros, an exact permutation test up to "
            f"{rule.enumerate_up_to} non-zero pairs; else normal approximation with continuity "
            f"and tie correction. Zero differences: {rule.zero_method} "
            f"({'dropped' if rule.zero_method == 'wilcox' else 'ranked, then dropped'}). "
            "n: the patients with both values (a patient missing either visit, e.g. lost to "
            "follow-up, is left out of that comparison; nothing is imputed); zero differences "
            "count in n and in the estimate but not in the test's ranks. Estimate: the Hodges-"
            "Lehmann shift (median of the Walsh averages of the paired differences, R's "
            "wilcox.test '(pseudo)median'), with the 95% interval that inverts the same signed-"
            "rank test: every shift d at which the test of (differences - d) gives p >= 0.05 "
            "(without ties R's exact interval, from the Walsh averages' order statistics; with "
            "ties the permutation test's); so it excludes 0 exactly when p < 0.05 (a zero "
            "difference on the boundary aside) and none exists below 6 pairs.",
            "Clinical analyses: " + ", ".join(self.clinical) + ".",
            "Cox models (after vs before infusion, Efron ties): whether the ordinary maximum-"
            "likelihood estimate exists is checked first (a linear programme finds any "
            "direction in which the partial likelihood rises for ever: monotone likelihood). "
            "Where it does not exist, no estimate, interval or Wald p is given for it; where it "
            "does, the Wald p comes with the Wald interval and the likelihood-ratio p with the "
            "profile-likelihood interval. Every "
            "model also gets Firth's penalised estimate (Heinze & Schemper 2001, as R's "
            "coxphf) with its profile penalised-likelihood 95% interval and penalised "
            "likelihood-ratio p; the stratified model gets the exact conditional analysis of "
            "the informative pairs (binomial, 1/2): median-unbiased hazard ratio, Clopper-"
            "Pearson 95% interval, two-sided exact p. The unmatched model takes a patient's "
            "two windows as independent, so its standard errors and p ignore the pairing (no "
            "robust, patient-clustered variance: with a phase I trial's few patients as "
            "clusters the sandwich estimate is itself unreliable); the stratified model is "
            "the paired analysis. Each window contributes its first relapse only.",
            f"Primary p: unmatched Cox {self.primary_p.cox_unmatched}; stratified Cox "
            f"{self.primary_p.cox_stratified}"
            + (
                " (where the ordinary estimate does not exist: Firth's penalised "
                "likelihood-ratio test)"
                if {"wald", "likelihood_ratio"}
                & {self.primary_p.cox_unmatched, self.primary_p.cox_stratified}
                else ""
            )
            + f"; drug use {self.primary_p.drug_use} (McNemar is the paired test: the same "
            "patients at both dates; Fisher's test, as the trial's report, treats the dates as "
            "independent groups); each signed-rank test its own p. Fisher's and McNemar's "
            "p are two-sided exact conditional p-values, not mid-p (Fisher: the sum of the "
            "tables no more probable than the one observed, as R's fisher.test; McNemar: 2 x "
            "the smaller binomial tail of the discordant pairs). Odds ratios (Fisher) are "
            "conditional maximum-likelihood estimates with exact conditional 95% intervals "
            "(as R's fisher.test); with a zero cell the estimate is 0 or infinite and the row "
            "is flagged. McNemar's paired odds ratio b/c (stopped/started) is exact conditional "
            "on the discordant patients: median-unbiased estimate, Clopper-Pearson 95% "
            "interval (which excludes 1 exactly when McNemar's p < 0.05). The change in the "
            "share of patients on a drug has Newcombe's hybrid score 95% interval for paired "
            "proportions (Newcombe 1998, method 10; approximate).",
        ]
