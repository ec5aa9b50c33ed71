//! LogQL tokens. Owns turning query text into tokens with byte offsets; never interprets them.

use super::ParseError;

#[derive(Debug, Clone, PartialEq)]
pub enum Tok {
    LBrace,
    RBrace,
    LParen,
    RParen,
    LBrack,
    RBrack,
    Comma,
    Dot,
    Eq,
    EqEq,
    Neq,
    Re,
    Nre,
    PipeEq,
    PipeRe,
    PipeGt,
    NotGt,
    Pipe,
    Gt,
    Ge,
    Lt,
    Le,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Pow,
    /// A quoted string, already unquoted.
    Str(String),
    /// A number, possibly with a unit suffix (`5m`, `1.5KB`, `1e3`): interpreted by the parser.
    Num(String),
    Ident(String),
    /// `--strict`, `--keep-empty`
    Flag(String),
    Eof,
}

#[derive(Debug, Clone)]
pub struct Token {
    pub tok: Tok,
    /// Byte offset of the token's first character.
    pub pos: usize,
}

pub fn lex(src: &str) -> Result<Vec<Token>, ParseError> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        // Comments run to the end of the line, as in PromQL.
        if c == b'#' {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        let start = i;
        let two = if i + 1 < b.len() { &b[i..i + 2] } else { &b[i..i + 1] };
        let (tok, len) = match two {
            b"!=" => (Tok::Neq, 2),
            b"=~" => (Tok::Re, 2),
            b"!~" => (Tok::Nre, 2),
            b"|=" => (Tok::PipeEq, 2),
            b"|~" => (Tok::PipeRe, 2),
            b"|>" => (Tok::PipeGt, 2),
            b"!>" => (Tok::NotGt, 2),
            b"==" => (Tok::EqEq, 2),
            b">=" => (Tok::Ge, 2),
            b"<=" => (Tok::Le, 2),
            _ => match c {
                b'{' => (Tok::LBrace, 1),
                b'}' => (Tok::RBrace, 1),
                b'(' => (Tok::LParen, 1),
                b')' => (Tok::RParen, 1),
                b'[' => (Tok::LBrack, 1),
                b']' => (Tok::RBrack, 1),
                b',' => (Tok::Comma, 1),
                b'=' => (Tok::Eq, 1),
                b'|' => (Tok::Pipe, 1),
                b'>' => (Tok::Gt, 1),
                b'<' => (Tok::Lt, 1),
                b'+' => (Tok::Add, 1),
                b'*' => (Tok::Mul, 1),
                b'/' => (Tok::Div, 1),
                b'%' => (Tok::Mod, 1),
                b'^' => (Tok::Pow, 1),
                b'-' if i + 2 < b.len() && b[i + 1] == b'-' && b[i + 2].is_ascii_alphabetic() => {
                    let mut j = i + 2;
                    while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'-' || b[j] == b'_') {
                        j += 1;
                    }
                    (Tok::Flag(src[i + 2..j].to_string()), j - i)
                }
                b'-' => (Tok::Sub, 1),
                b'"' => {
                    let (s, n) = lex_quoted(src, i)?;
                    (Tok::Str(s), n)
                }
                b'`' => match src[i + 1..].find('`') {
                    Some(end) => (Tok::Str(src[i + 1..i + 1 + end].to_string()), end + 2),
                    None => return Err(ParseError::at(src, i, "syntax error: unexpected $end".into())),
                },
                b'.' if i + 1 < b.len() && b[i + 1].is_ascii_digit() => lex_number(src, i),
                b'.' => (Tok::Dot, 1),
                b'0'..=b'9' => lex_number(src, i),
                _ if c.is_ascii_alphabetic() || c == b'_' => {
                    let mut j = i;
                    while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                        j += 1;
                    }
                    (Tok::Ident(src[i..j].to_string()), j - i)
                }
                _ => {
                    let ch = src[i..].chars().next().unwrap_or('?');
                    return Err(ParseError::at(src, i, format!("syntax error: unexpected {ch:?}")));
                }
            },
        };
        out.push(Token { tok, pos: start });
        i += len;
    }
    out.push(Token {
        tok: Tok::Eof,
        pos: src.len(),
    });
    Ok(out)
}

/// Numbers keep letters and dots that follow them so `1.5KB`, `1h30m` and `5x` reach the parser
/// whole; an exponent sign is taken only right after `e`/`E` following digits.
fn lex_number(src: &str, i: usize) -> (Tok, usize) {
    let b = src.as_bytes();
    let mut j = i;
    while j < b.len() {
        let c = b[j];
        let unit_char = c.is_ascii_alphanumeric() || c == b'.' || c == b'_';
        let exp_sign = (c == b'+' || c == b'-')
            && j > i
            && (b[j - 1] == b'e' || b[j - 1] == b'E')
            && j + 1 < b.len()
            && b[j + 1].is_ascii_digit()
            && src[i..j - 1].bytes().all(|x| x.is_ascii_digit() || x == b'.');
        if !(unit_char || exp_sign) {
            break;
        }
        j += 1;
    }
    (Tok::Num(src[i..j].to_string()), j - i)
}

/// Go `strconv.Unquote` for a double-quoted string starting at `i`.
fn lex_quoted(src: &str, i: usize) -> Result<(String, usize), ParseError> {
    let mut out = String::new();
    let mut it = src[i + 1..].char_indices();
    while let Some((k, c)) = it.next() {
        match c {
            '"' => return Ok((out, k + 2)),
            '\\' => {
                let Some((_, e)) = it.next() else { break };
                match e {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    'a' => out.push('\x07'),
                    'b' => out.push('\x08'),
                    'f' => out.push('\x0c'),
                    'v' => out.push('\x0b'),
                    '\\' => out.push('\\'),
                    '"' => out.push('"'),
                    '\'' => out.push('\''),
                    'x' | 'u' | 'U' => {
                        let n = match e {
                            'x' => 2,
                            'u' => 4,
                            _ => 8,
                        };
                        let mut v = 0u32;
                        for _ in 0..n {
                            let Some((_, h)) = it.next() else { break };
                            v = v * 16 + h.to_digit(16).unwrap_or(0);
                        }
                        // \x is a byte in Go; a lone byte >= 0x80 is taken as its code point.
                        out.push(char::from_u32(v).unwrap_or('\u{FFFD}'));
                    }
                    '0'..='7' => {
                        let mut v = e.to_digit(8).unwrap_or(0);
                        for _ in 0..2 {
                            let Some((_, h)) = it.next() else { break };
                            v = v * 8 + h.to_digit(8).unwrap_or(0);
                        }
                        out.push(char::from_u32(v).unwrap_or('\u{FFFD}'));
                    }
                    other => {
                        return Err(ParseError::at(
                            src,
                            i,
                            format!("syntax error: invalid escape sequence \\{other}"),
                        ));
                    }
                }
            }
            c => out.push(c),
        }
    }
    Err(ParseError::at(src, i, "syntax error: unexpected $end".into()))
}
