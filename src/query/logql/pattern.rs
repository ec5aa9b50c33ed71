//! Loki's `pattern` expressions (`<ip> - <_> "<method> ..."`): parsing, capture extraction and the
//! match test used by `|>` / `!>` line filters. Never allocates per line except for captures.

#[derive(Debug, Clone)]
enum Node {
    Lit(Vec<u8>),
    /// A capture; `None` for the unnamed `<_>`.
    Cap(Option<String>),
}

#[derive(Debug, Clone)]
pub struct Pattern {
    nodes: Vec<Node>,
    /// The pattern as written, for printing the query back (`format_query`).
    src: String,
}

impl Pattern {
    /// `filter`: line-filter use, where a pattern without named captures is allowed.
    pub fn parse(src: &str, filter: bool) -> Result<Pattern, String> {
        let mut nodes: Vec<Node> = Vec::new();
        let b = src.as_bytes();
        let mut i = 0;
        let mut lit = Vec::new();
        while i < b.len() {
            if b[i] == b'<' {
                let rest = &src[i + 1..];
                let n = rest
                    .bytes()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == b'_')
                    .count();
                let valid = n > 0 && rest.as_bytes().get(n) == Some(&b'>') && !rest.as_bytes()[0].is_ascii_digit();
                if valid {
                    if !lit.is_empty() {
                        nodes.push(Node::Lit(std::mem::take(&mut lit)));
                    }
                    let name = &rest[..n];
                    if let Some(Node::Cap(prev)) = nodes.last() {
                        let prev = prev.as_deref().unwrap_or("_");
                        return Err(format!(
                            "found consecutive capture '<{prev}><{name}>': invalid expression"
                        ));
                    }
                    let cap = if name == "_" { None } else { Some(name.to_string()) };
                    if let Some(c) = &cap
                        && nodes.iter().any(|x| matches!(x, Node::Cap(Some(o)) if o == c))
                    {
                        return Err(format!("duplicate capture name ({c}): invalid expression"));
                    }
                    nodes.push(Node::Cap(cap));
                    i += n + 2;
                    continue;
                }
            }
            lit.push(b[i]);
            i += 1;
        }
        if !lit.is_empty() {
            nodes.push(Node::Lit(lit));
        }
        if !filter && !nodes.iter().any(|n| matches!(n, Node::Cap(Some(_)))) {
            return Err("at least one capture is required".into());
        }
        Ok(Pattern {
            nodes,
            src: src.to_string(),
        })
    }

    /// The pattern as written.
    pub fn source(&self) -> &str {
        &self.src
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.nodes.iter().filter_map(|n| match n {
            Node::Cap(Some(s)) => Some(s.as_str()),
            _ => None,
        })
    }

    /// Loki's `matcher.Matches`: captures in order; a missing literal captures the rest.
    pub fn captures<'a>(&'a self, line: &'a [u8], mut f: impl FnMut(&'a str, &'a [u8])) {
        let mut input = line;
        if input.is_empty() || self.nodes.is_empty() {
            return;
        }
        let mut expr = &self.nodes[..];
        if let Node::Lit(ls) = &expr[0] {
            if !input.starts_with(ls) {
                return;
            }
            input = &input[ls.len()..];
            expr = &expr[1..];
        }
        while !expr.is_empty() {
            let Node::Cap(name) = &expr[0] else { return };
            if expr.len() == 1 {
                if let Some(n) = name {
                    f(n, input);
                }
                return;
            }
            let Node::Lit(ls) = &expr[1] else { return };
            expr = &expr[2..];
            match memchr::memmem::find(input, ls) {
                None => {
                    if let Some(n) = name {
                        f(n, input);
                    }
                    return;
                }
                Some(i) => {
                    if let Some(n) = name {
                        f(n, &input[..i]);
                    }
                    input = &input[i + ls.len()..];
                }
            }
        }
    }

    /// Loki's `matcher.Test`, used by pattern line filters.
    pub fn test(&self, line: &[u8]) -> bool {
        if line.is_empty() || self.nodes.is_empty() {
            return line.is_empty() && self.nodes.is_empty();
        }
        let mut off = 0;
        for (i, n) in self.nodes.iter().enumerate() {
            let Node::Lit(lit) = n else { continue };
            match memchr::memmem::find(&line[off..], lit) {
                None => return false,
                Some(j) => {
                    if i != 0 && j == 0 {
                        return false;
                    }
                    off += j + lit.len();
                }
            }
        }
        let req_rem = matches!(self.nodes.last(), Some(Node::Cap(_)));
        let has_rem = off != line.len();
        req_rem == has_rem
    }
}
