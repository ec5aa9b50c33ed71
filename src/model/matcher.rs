//! Label matchers with Prometheus semantics: regexes are fully anchored and `.` matches newline;
//! an absent label matches as the empty string.

use regex::Regex;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchOp {
    Equal,
    NotEqual,
    Regex,
    NotRegex,
}

#[derive(Debug, thiserror::Error)]
pub enum MatcherError {
    #[error("invalid regular expression {0:?}: {1}")]
    BadRegex(String, String),
}

#[derive(Clone)]
pub struct Matcher {
    pub name: String,
    pub op: MatchOp,
    pub value: String,
    re: Option<Regex>,
}

impl fmt::Debug for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match self.op {
            MatchOp::Equal => "=",
            MatchOp::NotEqual => "!=",
            MatchOp::Regex => "=~",
            MatchOp::NotRegex => "!~",
        };
        write!(f, "{}{}{:?}", self.name, op, self.value)
    }
}

impl Matcher {
    pub fn new(op: MatchOp, name: impl Into<String>, value: impl Into<String>) -> Result<Matcher, MatcherError> {
        let value = value.into();
        let re = match op {
            MatchOp::Regex | MatchOp::NotRegex => {
                let anchored = format!("^(?s:{value})$");
                Some(Regex::new(&anchored).map_err(|e| MatcherError::BadRegex(value.clone(), e.to_string()))?)
            }
            _ => None,
        };
        Ok(Matcher {
            name: name.into(),
            op,
            value,
            re,
        })
    }

    pub fn eq(name: impl Into<String>, value: impl Into<String>) -> Matcher {
        Matcher {
            name: name.into(),
            op: MatchOp::Equal,
            value: value.into(),
            re: None,
        }
    }

    /// Does the label value `v` ("" when absent) satisfy this matcher?
    pub fn matches(&self, v: &str) -> bool {
        match self.op {
            MatchOp::Equal => v == self.value,
            MatchOp::NotEqual => v != self.value,
            MatchOp::Regex => self.re.as_ref().is_some_and(|r| r.is_match(v)),
            MatchOp::NotRegex => !self.re.as_ref().is_some_and(|r| r.is_match(v)),
        }
    }

    /// True when the empty string matches, i.e. series without the label are selected too.
    pub fn matches_empty(&self) -> bool {
        self.matches("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(op: MatchOp, pat: &str, input: &str, want: bool) {
        let m = Matcher::new(op, "l", pat).unwrap();
        assert_eq!(m.matches(input), want, "{m} on {input:?}");
    }

    #[test]
    fn semantics() {
        check(MatchOp::Equal, "a", "a", true);
        check(MatchOp::Equal, "", "", true);
        check(MatchOp::NotEqual, "a", "", true);
        check(MatchOp::Regex, "a.*", "abc", true);
        check(MatchOp::Regex, "b", "abc", false); // anchored
        check(MatchOp::Regex, "a.c", "a\nc", true); // dot matches newline
        check(MatchOp::Regex, "a|b", "b", true);
        check(MatchOp::NotRegex, "a|b", "c", true);
        check(MatchOp::Regex, ".*", "", true);
    }

    #[test]
    fn bad_regex() {
        assert!(Matcher::new(MatchOp::Regex, "l", "(").is_err());
    }
}
