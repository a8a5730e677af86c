//! ERIS, the adversarial review of a DIKE verdict: an advocate defends the verdict, ERIS
//! argues the opposing or culturally contextual reading, under the debate's falling
//! contentiousness ([`crate::debate::argue`]). If one side is convinced, the verdict
//! stands or is revised accordingly; if neither is, the case goes to a person.

use serde::{Deserialize, Serialize};

use super::EthicsError;
use super::check::Report;
use super::feedback::{Case, Verdict, escalate};
use super::journal::Journal;
use crate::backend::Backend;
use crate::debate::argue::{ArgueConfig, Argument, Outcome, Side, argue};
use crate::debate::protocol::Observer;

/// How a review ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Settlement {
    /// ERIS was convinced: the verdict stands.
    Stands,
    /// The advocate was convinced: the verdict is revised.
    Revised { verdict: Verdict },
    /// No consensus: case `case` waits in the human review queue.
    Escalated { case: u64 },
}

/// The review and its settlement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Review {
    pub argument: Argument,
    pub settlement: Settlement,
    /// The verdict after review (the machine's, until a person decides an escalated case).
    pub verdict: Verdict,
}

/// Who argues: the advocate's and ERIS's models.
#[derive(Debug, Clone)]
pub struct Reviewers {
    pub advocate_model: String,
    pub eris_model: String,
}

/// The question both sides argue about, stated from the report.
pub fn subject(text: &str, report: &Report) -> String {
    let codes = report
        .codes
        .iter()
        .map(|c| c.code.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "A checker judged this message a {} of the codes of conduct ({}), reading its behaviour as \"{}\".\nMessage: \"{}\"\nShould the message be blocked?",
        report.verdict,
        if codes.is_empty() {
            "none named"
        } else {
            &codes
        },
        report.behaviour,
        text.trim()
    )
}

/// Runs the review of a violation verdict and settles it, escalating to `journal` when
/// there is no consensus.
pub fn review(
    backend: &dyn Backend,
    text: &str,
    report: &Report,
    who: &Reviewers,
    cfg: &ArgueConfig,
    journal: &Journal,
    observer: &dyn Observer,
) -> Result<Review, EthicsError> {
    let stake = report
        .codes
        .first()
        .map(|c| {
            let quote = c
                .spans
                .first()
                .map(|s| format!(" (\"{s}\")"))
                .unwrap_or_default();
            format!("it breaks the code `{}`{quote}", c.code)
        })
        .unwrap_or_else(|| format!("its behaviour, {}, is out of bounds", report.behaviour));
    let context = if cfg.context.is_empty() {
        "the reader's own setting".to_string()
    } else {
        cfg.context.clone()
    };
    let sides = [
        Side {
            name: "dike".into(),
            model: who.advocate_model.clone(),
            stance: format!("the message should be blocked, because {stake}."),
        },
        Side {
            name: "eris".into(),
            model: who.eris_model.clone(),
            stance: format!(
                "the message should not be blocked: read in context ({context}), it is an acceptable way to say something the writer is entitled to say, and blocking it would be over-censorship."
            ),
        },
    ];
    let argument = argue(backend, &subject(text, report), &sides, cfg, observer)?;
    let (settlement, verdict) = match argument.outcome {
        Outcome::Conceded { side: 1 } => (Settlement::Stands, report.verdict),
        Outcome::Conceded { .. } => {
            let v = report.verdict.flipped();
            (Settlement::Revised { verdict: v }, v)
        }
        Outcome::NoConsensus => {
            let case = escalate(
                journal,
                Case {
                    text: text.trim().to_string(),
                    verdict: report.verdict,
                    behaviour: report.behaviour.clone(),
                    codes: report.codes.iter().map(|c| c.code.clone()).collect(),
                    reason: format!(
                        "DIKE and ERIS did not agree after {} round(s)",
                        argument.exchanges.len()
                    ),
                    context: cfg.context.clone(),
                    model: report.model.clone(),
                },
            )?;
            (Settlement::Escalated { case }, report.verdict)
        }
    };
    Ok(Review {
        argument,
        settlement,
        verdict,
    })
}
