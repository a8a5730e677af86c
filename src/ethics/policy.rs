//! The ethics policy as data: codes of conduct, the Wheel of Virtues, the behaviour
//! scale DIKE classifies into, the allowed range G and the cultural context.
//!
//! A policy is a TOML file; the default one ships in the crate (`policy.toml`).
//! [`Policy::parse`] checks what serde cannot (unique ids, a range inside the scale, a
//! spectrum BEAM knows) and names the line of every problem, so a user editing a policy
//! is pointed at the mistake.

use std::ops::RangeInclusive;
use std::path::Path;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::EthicsError;
use crate::emotion::beam::Beam;

const BUILTIN: &str = include_str!("policy.toml");

/// One code of conduct, with the examples that seed its rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Code {
    pub id: String,
    pub description: String,
    /// The virtue of the wheel this code protects, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtue: Option<String>,
    #[serde(default)]
    pub harmful: Vec<String>,
    #[serde(default)]
    pub harmless: Vec<String>,
}

/// A virtue as the mean between a vice of deficit and a vice of excess.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Virtue {
    pub name: String,
    pub deficit: String,
    pub excess: String,
    pub description: String,
    /// `paper` for the pairs the paper gives, `pathos` for this project's defaults.
    pub origin: String,
}

/// One behaviour of the scale.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Behaviour {
    pub name: String,
    pub description: String,
}

/// A checked policy, ready to use.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Policy {
    pub name: String,
    pub context: String,
    /// Index of the BEAM spectrum the behaviour scale runs along.
    pub spectrum: usize,
    pub spectrum_name: String,
    /// Ordered from the spectrum's negative pole to its positive pole.
    pub behaviours: Vec<Behaviour>,
    /// The allowed range G, as behaviour indices.
    pub allowed: RangeInclusive<usize>,
    pub codes: Vec<Code>,
    pub virtues: Vec<Virtue>,
}

// What the file holds, with spans where a later check may need to name a line.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    name: String,
    #[serde(default)]
    context: String,
    scale: RawScale,
    #[serde(rename = "code", default)]
    codes: Vec<Spanned<RawCode>>,
    #[serde(rename = "virtue", default)]
    virtues: Vec<Spanned<RawVirtue>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScale {
    spectrum: Spanned<String>,
    allowed: Spanned<RawRange>,
    #[serde(rename = "behaviour")]
    behaviours: Vec<Spanned<Behaviour>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRange {
    from: String,
    to: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCode {
    id: String,
    description: String,
    #[serde(default)]
    virtue: Option<String>,
    #[serde(default)]
    harmful: Vec<String>,
    #[serde(default)]
    harmless: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVirtue {
    name: String,
    deficit: String,
    excess: String,
    description: String,
    origin: String,
}

/// The 1-based line holding byte `offset` of `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

impl Policy {
    /// The policy that ships with pathos.
    pub fn builtin() -> Self {
        Self::parse(BUILTIN, "builtin policy").expect("the shipped policy is checked by the tests")
    }

    /// Reads and checks a policy file.
    pub fn load(path: &Path) -> Result<Self, EthicsError> {
        let text = std::fs::read_to_string(path).map_err(|e| EthicsError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and checks policy text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, EthicsError> {
        let err = |offset: usize, message: String| EthicsError::Policy {
            origin: origin.to_string(),
            line: line_of(text, offset),
            message,
        };
        let raw: RawPolicy = toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            err(offset, e.message().to_string())
        })?;
        let beam = Beam::builtin();
        let spectrum = beam
            .find_spectrum(raw.scale.spectrum.get_ref())
            .map_err(|e| err(raw.scale.spectrum.span().start, e.to_string()))?;
        let behaviours: Vec<Behaviour> = raw
            .scale
            .behaviours
            .iter()
            .map(|b| b.get_ref().clone())
            .collect();
        if behaviours.len() < 2 {
            return Err(err(
                raw.scale.spectrum.span().start,
                "the behaviour scale needs at least 2 behaviours".into(),
            ));
        }
        for (i, b) in raw.scale.behaviours.iter().enumerate() {
            let name = &b.get_ref().name;
            if name.trim().is_empty() {
                return Err(err(b.span().start, "a behaviour has an empty name".into()));
            }
            if behaviours[..i].iter().any(|o| &o.name == name) {
                return Err(err(
                    b.span().start,
                    format!("behaviour `{name}` appears twice"),
                ));
            }
        }
        let names = || {
            behaviours
                .iter()
                .map(|b| b.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let range = raw.scale.allowed.get_ref();
        let find = |n: &str| behaviours.iter().position(|b| b.name == n);
        let (Some(from), Some(to)) = (find(&range.from), find(&range.to)) else {
            return Err(err(
                raw.scale.allowed.span().start,
                format!(
                    "the allowed range must name behaviours of the scale ({}), got `{}` to `{}`",
                    names(),
                    range.from,
                    range.to
                ),
            ));
        };
        if from > to {
            return Err(err(
                raw.scale.allowed.span().start,
                format!(
                    "the allowed range runs backwards: `{}` comes after `{}` on the scale",
                    range.from, range.to
                ),
            ));
        }
        if raw.codes.is_empty() {
            return Err(err(0, "a policy needs at least one [[code]]".into()));
        }
        let mut codes: Vec<Code> = Vec::new();
        for c in &raw.codes {
            let r = c.get_ref();
            if r.id.trim().is_empty() || r.description.trim().is_empty() {
                return Err(err(
                    c.span().start,
                    "a code needs a non-empty id and description".into(),
                ));
            }
            if codes.iter().any(|o| o.id == r.id) {
                return Err(err(
                    c.span().start,
                    format!("code `{}` appears twice", r.id),
                ));
            }
            codes.push(Code {
                id: r.id.clone(),
                description: r.description.clone(),
                virtue: r.virtue.clone(),
                harmful: r.harmful.clone(),
                harmless: r.harmless.clone(),
            });
        }
        let mut virtues: Vec<Virtue> = Vec::new();
        for v in &raw.virtues {
            let r = v.get_ref();
            if !matches!(r.origin.as_str(), "paper" | "pathos") {
                return Err(err(
                    v.span().start,
                    format!(
                        "virtue `{}`: origin must be `paper` or `pathos`, got `{}`",
                        r.name, r.origin
                    ),
                ));
            }
            if virtues.iter().any(|o| o.name == r.name) {
                return Err(err(
                    v.span().start,
                    format!("virtue `{}` appears twice", r.name),
                ));
            }
            virtues.push(Virtue {
                name: r.name.clone(),
                deficit: r.deficit.clone(),
                excess: r.excess.clone(),
                description: r.description.clone(),
                origin: r.origin.clone(),
            });
        }
        for (c, raw_c) in codes.iter().zip(&raw.codes) {
            if let Some(v) = &c.virtue
                && !virtues.iter().any(|o| &o.name == v)
            {
                return Err(err(
                    raw_c.span().start,
                    format!("code `{}` names virtue `{v}`, which the wheel lacks", c.id),
                ));
            }
        }
        Ok(Self {
            name: raw.name,
            context: raw.context,
            spectrum,
            spectrum_name: beam.spectra[spectrum].name.clone(),
            behaviours,
            allowed: from..=to,
            codes,
            virtues,
        })
    }

    /// Whether behaviour `index` is inside the allowed range.
    pub fn allows(&self, index: usize) -> bool {
        self.allowed.contains(&index)
    }

    /// The BEAM level behaviour `index` sits at: BEAM's own levels when the scale has as
    /// many behaviours as BEAM has levels, else L evenly spaced levels over [-1, +1].
    pub fn behaviour_level(&self, index: usize) -> f64 {
        let l = self.behaviours.len();
        let levels = &Beam::builtin().levels;
        if l == levels.len() {
            return levels[index.min(l - 1)];
        }
        if l < 2 {
            return 0.0;
        }
        -1.0 + 2.0 * index as f64 / (l - 1) as f64
    }

    /// The code with this id.
    pub fn code(&self, id: &str) -> Option<&Code> {
        self.codes.iter().find(|c| c.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_policy_parses_with_seven_behaviours_and_neutral_or_better() {
        let p = Policy::builtin();
        assert_eq!(p.behaviours.len(), 7);
        assert_eq!(p.allowed, 3..=6);
        assert_eq!(p.spectrum_name, "anger-peace");
        assert!(p.allows(3) && !p.allows(2));
        assert_eq!(p.behaviour_level(0), -1.0);
        assert_eq!(p.behaviour_level(3), 0.0);
        assert_eq!(p.behaviour_level(5), 0.6);
        assert!(p.virtues.iter().filter(|v| v.origin == "paper").count() == 2);
        assert!(p.code("respect").is_some());
    }

    fn error_of(text: &str) -> (usize, String) {
        match Policy::parse(text, "t.toml") {
            Err(EthicsError::Policy { line, message, .. }) => (line, message),
            other => panic!("expected a policy error, got {other:?}"),
        }
    }

    const SCALE: &str = r#"name = "p"
[scale]
spectrum = "anger-peace"
allowed = { from = "b", to = "c" }
[[scale.behaviour]]
name = "a"
description = "x"
[[scale.behaviour]]
name = "b"
description = "x"
[[scale.behaviour]]
name = "c"
description = "x"
"#;

    #[test]
    fn errors_name_the_line() {
        // Syntax error on line 2.
        let (line, _) = error_of("name = \"p\"\nscale = [oops\n");
        assert_eq!(line, 2);
        // Unknown spectrum on line 3.
        let bad = SCALE.replace("anger-peace", "anger-calm");
        let (line, msg) = error_of(&format!("{bad}[[code]]\nid=\"x\"\ndescription=\"d\"\n"));
        assert_eq!(line, 3);
        assert!(msg.contains("anger-calm"), "{msg}");
        // Range naming an unknown behaviour, on line 4.
        let bad = SCALE.replace("to = \"c\"", "to = \"z\"");
        let (line, msg) = error_of(&format!("{bad}[[code]]\nid=\"x\"\ndescription=\"d\"\n"));
        assert_eq!(line, 4);
        assert!(msg.contains("a, b, c"), "{msg}");
        // Duplicate code: the second [[code]] header is on line 17.
        let text = format!(
            "{SCALE}[[code]]\nid=\"x\"\ndescription=\"d\"\n[[code]]\nid=\"x\"\ndescription=\"d\"\n"
        );
        let (line, msg) = error_of(&text);
        assert!(msg.contains("twice"), "{msg}");
        assert_eq!(line, 17);
        // No codes at all.
        let (_, msg) = error_of(SCALE);
        assert!(msg.contains("at least one"), "{msg}");
        // Unknown field.
        let (line, msg) = error_of(&format!("{SCALE}[[code]]\nid=\"x\"\ndescripton=\"d\"\n"));
        assert!(msg.contains("descripton"), "{msg}");
        assert!(line >= 15, "{line}");
    }

    #[test]
    fn backwards_range_and_bad_origin_are_refused() {
        let bad = SCALE.replace("from = \"b\", to = \"c\"", "from = \"c\", to = \"a\"");
        let (_, msg) = error_of(&format!("{bad}[[code]]\nid=\"x\"\ndescription=\"d\"\n"));
        assert!(msg.contains("backwards"), "{msg}");
        let text = format!(
            "{SCALE}[[code]]\nid=\"x\"\ndescription=\"d\"\n[[virtue]]\nname=\"v\"\ndeficit=\"a\"\nexcess=\"b\"\ndescription=\"d\"\norigin=\"made up\"\n"
        );
        let (_, msg) = error_of(&text);
        assert!(msg.contains("origin"), "{msg}");
    }
}
