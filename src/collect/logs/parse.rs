//! Line formats of container log files: CRI (containerd, CRI-O) and Docker json-file.
//!
//! CRI: `<RFC3339 timestamp> <stdout|stderr> <tags> <message>` where `tags` is `:`-separated and only
//! `tags[0]` (`P` partial, `F` full) is read, as the kubelet does ("keep this forward compatible").
//! containerd trims the fraction's trailing zeros (0-9 digits, possibly none) and writes its local
//! zone (`Z` or `±hh:mm`); conmon always writes 9 digits and a numeric offset: both parse.
//! Docker: `{"log":"...\n","stream":"stdout","time":"..."}`; a `log` not ending in `\n` is a
//! partial (Docker splits at 16 KiB and that missing newline is its only marker).

use crate::model::text::parse_rfc3339_ns;
use std::borrow::Cow;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Cri,
    Docker,
}

/// stdout = 0, stderr = 1: the index of per-stream state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout = 0,
    Stderr = 1,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    fn from_bytes(b: &[u8]) -> Option<Stream> {
        match b {
            b"stdout" => Some(Stream::Stdout),
            b"stderr" => Some(Stream::Stderr),
            _ => None,
        }
    }
}

/// One physical line, without its `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed<'a> {
    pub ts: i64,
    pub stream: Stream,
    /// More of this logical line follows in a later physical line of the same stream.
    pub partial: bool,
    pub msg: Cow<'a, [u8]>,
}

/// The kubelet's order (`getParseFunc`): CRI first, then Docker JSON, decided on a file's first line.
pub fn detect(line: &[u8]) -> Option<Format> {
    if parse_cri(line).is_some() {
        Some(Format::Cri)
    } else if parse_docker(line).is_some() {
        Some(Format::Docker)
    } else {
        None
    }
}

pub fn parse(format: Format, line: &[u8]) -> Option<Parsed<'_>> {
    match format {
        Format::Cri => parse_cri(line),
        Format::Docker => parse_docker(line),
    }
}

pub fn parse_cri(line: &[u8]) -> Option<Parsed<'_>> {
    let sp1 = memchr::memchr(b' ', line)?;
    let ts = parse_rfc3339_ns(std::str::from_utf8(&line[..sp1]).ok()?)?;
    let rest = &line[sp1 + 1..];
    let sp2 = memchr::memchr(b' ', rest)?;
    let stream = Stream::from_bytes(&rest[..sp2])?;
    let rest = &rest[sp2 + 1..];
    // The writer always puts a space after the tags, even before an empty message; accept its
    // absence too (a hand-written file).
    let (tags, mut msg) = match memchr::memchr(b' ', rest) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &rest[rest.len()..]),
    };
    let flag = tags.split(|&c| c == b':').next().unwrap_or(b"");
    let partial = match flag {
        b"P" => true,
        b"F" => false,
        _ => return None,
    };
    // conmon keeps a CRLF source's `\r` (containerd strips it): drop it from a line's end.
    if !partial && msg.last() == Some(&b'\r') {
        msg = &msg[..msg.len() - 1];
    }
    Some(Parsed {
        ts,
        stream,
        partial,
        msg: Cow::Borrowed(msg),
    })
}

#[derive(serde::Deserialize)]
struct DockerLine<'a> {
    // Borrowed when the JSON string has no escapes; every complete Docker line ends in an escaped
    // `\n`, so this is one allocation per line in the (legacy) Docker format.
    #[serde(borrow)]
    log: Cow<'a, str>,
    #[serde(borrow)]
    stream: Cow<'a, str>,
    #[serde(borrow)]
    time: Cow<'a, str>,
}

pub fn parse_docker(line: &[u8]) -> Option<Parsed<'_>> {
    let d: DockerLine<'_> = serde_json::from_slice(line).ok()?;
    let stream = Stream::from_bytes(d.stream.as_bytes())?;
    let ts = parse_rfc3339_ns(&d.time)?;
    let (partial, msg) = match d.log {
        Cow::Borrowed(s) => match s.strip_suffix('\n') {
            Some(m) => (false, Cow::Borrowed(m.strip_suffix('\r').unwrap_or(m).as_bytes())),
            None => (true, Cow::Borrowed(s.as_bytes())),
        },
        Cow::Owned(mut s) => {
            let partial = !s.ends_with('\n');
            if !partial {
                s.pop();
                if s.ends_with('\r') {
                    s.pop();
                }
            }
            (partial, Cow::Owned(s.into_bytes()))
        }
    };
    Some(Parsed {
        ts,
        stream,
        partial,
        msg,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `want`: (ts ns, stream, partial, message) or `None` for a line that must be refused.
    fn check(format: Format, line: &str, want: Option<(i64, Stream, bool, &str)>) {
        let got = parse(format, line.as_bytes()).map(|p| (p.ts, p.stream, p.partial, p.msg.into_owned()));
        let want = want.map(|(t, s, p, m)| (t, s, p, m.as_bytes().to_vec()));
        assert_eq!(got, want, "{line:?}");
    }

    const T0: i64 = 1_475_713_029_000_000_000; // 2016-10-06T00:17:09Z

    #[test]
    fn cri_lines() {
        use Stream::*;
        let c = |l, w| check(Format::Cri, l, w);
        c(
            "2016-10-06T00:17:09.669794202Z stdout P log content 1",
            Some((T0 + 669_794_202, Stdout, true, "log content 1")),
        );
        c(
            "2016-10-06T00:17:09.669794203Z stderr F log content 2",
            Some((T0 + 669_794_203, Stderr, false, "log content 2")),
        );
        // containerd trims trailing zeros, down to no fraction at all.
        c(
            "2016-10-06T00:17:09.5Z stdout F x",
            Some((T0 + 500_000_000, Stdout, false, "x")),
        );
        c("2016-10-06T00:17:09Z stdout F x", Some((T0, Stdout, false, "x")));
        // conmon: 9 digits and a numeric offset; containerd in a non-UTC zone.
        c(
            "2016-10-06T01:17:09.000000001+01:00 stdout F y",
            Some((T0 + 1, Stdout, false, "y")),
        );
        c(
            "2016-10-05T23:17:09.25-01:00 stderr F z",
            Some((T0 + 250_000_000, Stderr, false, "z")),
        );
        // Empty message, with and without the writer's trailing space; tags with a future suffix.
        c("2016-10-06T00:17:09Z stdout F ", Some((T0, Stdout, false, "")));
        c("2016-10-06T00:17:09Z stdout F", Some((T0, Stdout, false, "")));
        c("2016-10-06T00:17:09Z stdout F:future x", Some((T0, Stdout, false, "x")));
        // Spaces inside the message are kept; a CRLF source's `\r` is dropped from full lines.
        c(
            "2016-10-06T00:17:09Z stdout F  a  b ",
            Some((T0, Stdout, false, " a  b ")),
        );
        c(
            "2016-10-06T00:17:09Z stdout F crlf\r",
            Some((T0, Stdout, false, "crlf")),
        );
        c(
            "2016-10-06T00:17:09Z stdout P crlf\r",
            Some((T0, Stdout, true, "crlf\r")),
        );
        // Refused: bad stream, bad flag, bad timestamp, not CRI at all.
        c("2016-10-06T00:17:09Z stdin F x", None);
        c("2016-10-06T00:17:09Z stdout X x", None);
        c("2016-10-06 00:17:09Z stdout F x", None);
        c(r#"{"log":"x\n","stream":"stdout","time":"2016-10-06T00:17:09Z"}"#, None);
    }

    #[test]
    fn docker_lines() {
        use Stream::*;
        let d = |l, w| check(Format::Docker, l, w);
        d(
            r#"{"log":"hello\n","stream":"stdout","time":"2016-10-06T00:17:09.669794202Z"}"#,
            Some((T0 + 669_794_202, Stdout, false, "hello")),
        );
        d(
            r#"{"log":"part","stream":"stderr","time":"2016-10-06T00:17:09Z"}"#,
            Some((T0, Stderr, true, "part")),
        );
        d(
            r#"{"time":"2016-10-06T00:17:09Z","stream":"stdout","log":"q\"\u00e9\r\n"}"#,
            Some((T0, Stdout, false, "q\"é")),
        );
        d(r#"{"log":"x\n","stream":"stdout"}"#, None);
        d("2016-10-06T00:17:09Z stdout F x", None);
    }

    #[test]
    fn detection() {
        assert_eq!(detect(b"2016-10-06T00:17:09Z stdout F x"), Some(Format::Cri));
        assert_eq!(
            detect(br#"{"log":"x\n","stream":"stdout","time":"2016-10-06T00:17:09Z"}"#),
            Some(Format::Docker)
        );
        assert_eq!(detect(b"plain text"), None);
    }
}
