//! Human feedback (SSHF step 5): cases the machine could not settle wait in a queue; a
//! person accepts or rejects each verdict; each decision becomes a rule change (an
//! example added to a code's rule) and a precedent for the same text. The model's
//! weights never change. Everything lives in the append-only [`Journal`].

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::EthicsError;
use super::journal::{Journal, Record};
use super::rules::{RuleOrigin, Ruleset};

/// A machine verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Violation,
}

impl Verdict {
    /// The other verdict.
    pub fn flipped(self) -> Self {
        match self {
            Verdict::Pass => Verdict::Violation,
            Verdict::Violation => Verdict::Pass,
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Pass => "pass",
            Verdict::Violation => "violation",
        })
    }
}

/// A case sent to human review.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Case {
    pub text: String,
    /// What the machine concluded.
    pub verdict: Verdict,
    pub behaviour: String,
    /// Codes at stake, most likely first.
    pub codes: Vec<String>,
    /// Why the machine could not settle it.
    pub reason: String,
    pub context: String,
    pub model: String,
}

/// A person's decision on a case: `accept` keeps the machine's verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub case: u64,
    pub accept: bool,
    /// The verdict that now holds for the case's text.
    pub verdict: Verdict,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// How a decision changed a rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleChange {
    pub case: u64,
    pub code: String,
    /// `harmful_example` or `harmless_example`.
    pub added: String,
    pub text: String,
}

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Entry {
    Case(Case),
    Decision(Decision),
    RuleChange(RuleChange),
}

/// The key a text is remembered by: lower case, whitespace collapsed.
pub fn text_key(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// Human verdicts by text, for later checks of the same text.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Precedents {
    by_text: HashMap<String, (u64, Verdict)>,
}

impl Precedents {
    /// The case id and verdict a person gave this text, if any.
    pub fn get(&self, text: &str) -> Option<(u64, Verdict)> {
        self.by_text.get(&text_key(text)).copied()
    }
}

/// Cases still waiting for a person.
pub fn queue(journal: &Journal) -> Result<Vec<Record<Entry>>, EthicsError> {
    let records: Vec<Record<Entry>> = journal.read()?;
    let decided: Vec<u64> = records
        .iter()
        .filter_map(|r| match &r.entry {
            Entry::Decision(d) => Some(d.case),
            _ => None,
        })
        .collect();
    Ok(records
        .into_iter()
        .filter(|r| matches!(r.entry, Entry::Case(_)) && !decided.contains(&r.seq))
        .collect())
}

/// Sends a case to human review; returns its id.
pub fn escalate(journal: &Journal, case: Case) -> Result<u64, EthicsError> {
    Ok(journal.append(Entry::Case(case))?.seq)
}

/// Records a person's decision on case `id` and the rule changes it causes.
pub fn decide(
    journal: &Journal,
    id: u64,
    accept: bool,
    note: Option<String>,
) -> Result<(Decision, Vec<RuleChange>), EthicsError> {
    let records: Vec<Record<Entry>> = journal.read()?;
    let case = records
        .iter()
        .find_map(|r| match &r.entry {
            Entry::Case(c) if r.seq == id => Some(c.clone()),
            _ => None,
        })
        .ok_or(EthicsError::UnknownCase { id })?;
    if let Some(d) = records.iter().find_map(|r| match &r.entry {
        Entry::Decision(d) if d.case == id => Some(d),
        _ => None,
    }) {
        return Err(EthicsError::AlreadyDecided {
            id,
            decision: if d.accept { "accepted" } else { "rejected" }.into(),
        });
    }
    let verdict = if accept {
        case.verdict
    } else {
        case.verdict.flipped()
    };
    let decision = Decision {
        case: id,
        accept,
        verdict,
        note,
    };
    journal.append(Entry::Decision(decision.clone()))?;
    // The text becomes an example of the verdict that now holds, for the code most at
    // stake (all codes of the case when it is a violation).
    let codes: Vec<String> = match verdict {
        Verdict::Violation => case.codes.iter().take(1).cloned().collect(),
        Verdict::Pass => case.codes.clone(),
    };
    let added = match verdict {
        Verdict::Violation => "harmful_example",
        Verdict::Pass => "harmless_example",
    };
    let mut changes = Vec::new();
    for code in codes {
        let change = RuleChange {
            case: id,
            code,
            added: added.into(),
            text: case.text.clone(),
        };
        journal.append(Entry::RuleChange(change.clone()))?;
        changes.push(change);
    }
    Ok((decision, changes))
}

/// Folds every decision of the journal into `rules` and returns the precedents.
pub fn apply(records: &[Record<Entry>], rules: &mut Ruleset) -> Precedents {
    let mut precedents = Precedents::default();
    let cases: HashMap<u64, &Case> = records
        .iter()
        .filter_map(|r| match &r.entry {
            Entry::Case(c) => Some((r.seq, c)),
            _ => None,
        })
        .collect();
    for r in records {
        match &r.entry {
            Entry::Decision(d) => {
                if let Some(c) = cases.get(&d.case) {
                    precedents
                        .by_text
                        .insert(text_key(&c.text), (d.case, d.verdict));
                }
            }
            Entry::RuleChange(ch) => {
                if let Some(rule) = rules.get_mut(&ch.code) {
                    let list = if ch.added == "harmful_example" {
                        &mut rule.human_harmful
                    } else {
                        &mut rule.human_harmless
                    };
                    if !list.contains(&ch.text) {
                        list.push(ch.text.clone());
                    }
                    rule.origin = RuleOrigin::Feedback;
                }
            }
            Entry::Case(_) => {}
        }
    }
    precedents
}

/// A decision's record with the rule changes it caused.
pub type Decided = (Record<Entry>, Vec<RuleChange>);

/// Every decision with the rule changes it caused, oldest first.
pub fn history(journal: &Journal) -> Result<Vec<Decided>, EthicsError> {
    let records: Vec<Record<Entry>> = journal.read()?;
    let mut out = Vec::new();
    for r in &records {
        if let Entry::Decision(d) = &r.entry {
            let changes = records
                .iter()
                .filter_map(|x| match &x.entry {
                    Entry::RuleChange(c) if c.case == d.case => Some(c.clone()),
                    _ => None,
                })
                .collect();
            out.push((r.clone(), changes));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ethics::policy::Policy;

    fn case(text: &str, verdict: Verdict) -> Case {
        Case {
            text: text.into(),
            verdict,
            behaviour: "hostile".into(),
            codes: vec!["respect".into(), "no-harassment".into()],
            reason: "no consensus".into(),
            context: String::new(),
            model: "m".into(),
        }
    }

    #[test]
    fn feedback_changes_a_rule_and_sets_a_precedent() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let a = escalate(&j, case("You clumsy fool, again?", Verdict::Violation)).unwrap();
        let b = escalate(&j, case("That plan is foolish.", Verdict::Violation)).unwrap();
        assert_eq!(queue(&j).unwrap().len(), 2);
        // Rejecting case b: the text is not a violation after all.
        let (d, changes) = decide(&j, b, false, Some("criticises the plan".into())).unwrap();
        assert_eq!(d.verdict, Verdict::Pass);
        assert_eq!(changes.len(), 2);
        assert!(changes.iter().all(|c| c.added == "harmless_example"));
        let (d, changes) = decide(&j, a, true, None).unwrap();
        assert_eq!(d.verdict, Verdict::Violation);
        assert_eq!(changes.len(), 1);
        assert!(queue(&j).unwrap().is_empty());

        let policy = Policy::builtin();
        let mut rules = Ruleset::from_policy(&policy);
        let before = rules.get("respect").unwrap().clone();
        let p = apply(&j.read().unwrap(), &mut rules);
        let after = rules.get("respect").unwrap();
        assert_eq!(after.origin, RuleOrigin::Feedback);
        assert!(
            after
                .human_harmless
                .contains(&"That plan is foolish.".to_string())
        );
        assert!(
            after
                .human_harmful
                .contains(&"You clumsy fool, again?".to_string())
        );
        assert_ne!(&before, after);
        assert_eq!(p.get("that  plan is FOOLISH."), Some((b, Verdict::Pass)));
        assert_eq!(history(&j).unwrap().len(), 2);

        assert!(matches!(
            decide(&j, a, false, None),
            Err(EthicsError::AlreadyDecided { .. })
        ));
        assert!(matches!(
            decide(&j, 99, true, None),
            Err(EthicsError::UnknownCase { id: 99 })
        ));
    }
}
