//! The Go text/template subset Loki's `line_format` and `label_format` use: actions with pipes,
//! field access on the label map, literals, parenthesised pipelines, `{{-`/`-}}` trimming, and
//! Loki's function map. Never touches labels storage: it reads a lookup closure.

use std::fmt::Write;

#[derive(Debug, Clone)]
pub struct Template {
    nodes: Vec<Node>,
    /// Go template name used in execution errors (`line` for line_format, `label` otherwise).
    name: &'static str,
    /// The template as written, for printing the query back (`format_query`).
    src: String,
}

#[derive(Debug, Clone)]
enum Node {
    Text(String),
    Action(Pipeline),
}

#[derive(Debug, Clone)]
struct Pipeline {
    cmds: Vec<Cmd>,
}

#[derive(Debug, Clone)]
struct Cmd {
    args: Vec<Operand>,
    /// Line and byte column of the command's first token, for Go's error context.
    line: usize,
    col: usize,
}

#[derive(Debug, Clone)]
enum Operand {
    /// `.a.b` (empty for `.`)
    Field(Vec<String>),
    Func(String),
    Str(String),
    Num(f64, bool),
    /// `(pipeline).a.b`
    Sub(Pipeline, Vec<String>),
    /// `ident.Method` e.g. `__timestamp__.Unix`
    FuncField(String, Vec<String>),
}

/// A template value.
#[derive(Debug, Clone)]
pub enum Val {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// Nanoseconds since the epoch (Go `time.Time`, UTC).
    Time(i64),
    Json(serde_json::Value),
    Nil,
}

const FUNCS: &[&str] = &[
    "ToLower",
    "ToUpper",
    "Replace",
    "Trim",
    "TrimLeft",
    "TrimRight",
    "TrimPrefix",
    "TrimSuffix",
    "TrimSpace",
    "lower",
    "upper",
    "title",
    "trunc",
    "substr",
    "contains",
    "hasPrefix",
    "hasSuffix",
    "indent",
    "nindent",
    "replace",
    "repeat",
    "trim",
    "trimAll",
    "trimPrefix",
    "trimSuffix",
    "regexReplaceAll",
    "regexReplaceAllLiteral",
    "count",
    "urlencode",
    "urldecode",
    "b64enc",
    "b64dec",
    "bytes",
    "duration",
    "duration_seconds",
    "add",
    "sub",
    "mul",
    "div",
    "mod",
    "addf",
    "subf",
    "mulf",
    "divf",
    "max",
    "min",
    "maxf",
    "minf",
    "ceil",
    "floor",
    "round",
    "int",
    "float64",
    "default",
    "len",
    "fromJson",
    "date",
    "toDate",
    "now",
    "unixEpoch",
    "unixEpochMillis",
    "unixEpochNanos",
    "unixToTime",
    "alignLeft",
    "alignRight",
    "printf",
    "print",
    "println",
    "__line__",
    "__timestamp__",
    "eq",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
    "and",
    "or",
    "not",
    "index",
];

/// What a template sees of one entry.
pub trait Scope {
    fn label(&self, name: &str) -> Option<&str>;
    fn line(&self) -> &str;
    fn ts_ns(&self) -> i64;
}

impl Template {
    /// The template as written.
    pub fn source(&self) -> &str {
        &self.src
    }

    pub fn parse(src: &str, name: &'static str) -> Result<Template, String> {
        let mut nodes = Vec::new();
        let mut rest = src;
        let mut trim_next = false;
        while let Some(open) = rest.find("{{") {
            let mut text = &rest[..open];
            if trim_next {
                text = text.trim_start();
            }
            let mut inner_start = open + 2;
            let trim_left = rest[inner_start..].starts_with("- ") || rest[inner_start..].starts_with("-\t");
            if trim_left {
                text = text.trim_end();
                inner_start += 1;
            }
            if !text.is_empty() {
                nodes.push(Node::Text(text.to_string()));
            }
            let close = find_close(&rest[inner_start..]).ok_or("unclosed action")? + inner_start;
            let mut inner = &rest[inner_start..close];
            trim_next = false;
            if inner.ends_with(" -") || inner.ends_with("\t-") {
                inner = &inner[..inner.len() - 1];
                trim_next = true;
            }
            let inner_off = src.len() - rest.len() + inner_start;
            let (toks, pos) = tokenize(inner)?;
            let pos = pos
                .into_iter()
                .map(|p| {
                    let abs = inner_off + p;
                    let before = &src[..abs];
                    match before.rfind('\n') {
                        Some(nl) => (1 + before.matches('\n').count(), abs - nl - 1),
                        None => (1, abs),
                    }
                })
                .collect();
            let mut p = TParser { toks, pos, i: 0 };
            let pipe = p.pipeline()?;
            if p.i != p.toks.len() {
                return Err("unexpected token in action".into());
            }
            nodes.push(Node::Action(pipe));
            rest = &rest[close + 2..];
        }
        let mut text = rest;
        if trim_next {
            text = text.trim_start();
        }
        if !text.is_empty() {
            nodes.push(Node::Text(text.to_string()));
        }
        Ok(Template {
            nodes,
            name,
            src: src.to_string(),
        })
    }

    /// Renders into `out`; on a function failure returns Go's error text.
    pub fn render(&self, scope: &dyn Scope, out: &mut String) -> Result<(), String> {
        for n in &self.nodes {
            match n {
                Node::Text(t) => out.push_str(t),
                Node::Action(p) => {
                    let v = eval_pipeline(p, scope).map_err(|e| e.replace("\u{0}NAME", self.name))?;
                    write_val(&v, out);
                }
            }
        }
        Ok(())
    }
}

fn find_close(s: &str) -> Option<usize> {
    // Skip over quoted strings so `}}` inside a literal does not end the action.
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'`' => {
                i += 1;
                while i < b.len() && b[i] != b'`' {
                    i += 1;
                }
            }
            b'}' if i + 1 < b.len() && b[i + 1] == b'}' => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

#[derive(Debug, Clone, PartialEq)]
enum TTok {
    Pipe,
    LParen,
    RParen,
    Field(Vec<String>),
    Ident(String, Vec<String>),
    Str(String),
    Num(f64, bool),
}

/// Tokens of one action, with the byte offset where each starts.
fn tokenize(s: &str) -> Result<(Vec<TTok>, Vec<usize>), String> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut positions = Vec::new();
    let mut i = 0;
    let fields = |i: &mut usize| {
        let mut v = Vec::new();
        while *i < b.len() && b[*i] == b'.' {
            let st = *i + 1;
            let mut j = st;
            while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                j += 1;
            }
            v.push(s[st..j].to_string());
            *i = j;
        }
        v
    };
    while i < b.len() {
        let c = b[i];
        let start = i;
        while positions.len() < out.len() {
            positions.push(start);
        }
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'|' => {
                out.push(TTok::Pipe);
                i += 1
            }
            b'(' => {
                out.push(TTok::LParen);
                i += 1
            }
            b')' => {
                out.push(TTok::RParen);
                i += 1;
                if i < b.len() && b[i] == b'.' {
                    let f = fields(&mut i);
                    out.push(TTok::Field(f));
                }
            }
            b'.' => {
                let f = fields(&mut i);
                let f = if f.len() == 1 && f[0].is_empty() { Vec::new() } else { f };
                out.push(TTok::Field(f));
            }
            b'"' => {
                let mut v = String::new();
                let mut it = s[i + 1..].char_indices();
                let mut end = None;
                while let Some((k, ch)) = it.next() {
                    match ch {
                        '"' => {
                            end = Some(i + 1 + k + 1);
                            break;
                        }
                        '\\' => match it.next() {
                            Some((_, 'n')) => v.push('\n'),
                            Some((_, 't')) => v.push('\t'),
                            Some((_, 'r')) => v.push('\r'),
                            Some((_, 'x')) => {
                                let h: String = it.by_ref().take(2).map(|x| x.1).collect();
                                v.push(char::from_u32(u32::from_str_radix(&h, 16).unwrap_or(0)).unwrap_or('?'));
                            }
                            Some((_, 'u')) => {
                                let h: String = it.by_ref().take(4).map(|x| x.1).collect();
                                v.push(char::from_u32(u32::from_str_radix(&h, 16).unwrap_or(0)).unwrap_or('?'));
                            }
                            Some((_, o)) => v.push(o),
                            None => break,
                        },
                        o => v.push(o),
                    }
                }
                out.push(TTok::Str(v));
                i = end.ok_or("unterminated quoted string")?;
            }
            b'`' => {
                let end = s[i + 1..].find('`').ok_or("unterminated raw quoted string")? + i + 1;
                out.push(TTok::Str(s[i + 1..end].to_string()));
                i = end + 1;
            }
            b'0'..=b'9' | b'-' | b'+' => {
                let st = i;
                i += 1;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                    i += 1;
                }
                let t = &s[st..i];
                let is_int = !t.contains(['.', 'e', 'E']);
                let v: f64 = t.parse().map_err(|_| format!("bad number syntax: {t:?}"))?;
                out.push(TTok::Num(v, is_int));
            }
            _ if c.is_ascii_alphabetic() || c == b'_' => {
                let st = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                let name = s[st..i].to_string();
                let f = if i < b.len() && b[i] == b'.' {
                    fields(&mut i)
                } else {
                    Vec::new()
                };
                out.push(TTok::Ident(name, f));
            }
            _ => return Err(format!("unexpected {:?} in command", c as char)),
        }
        while positions.len() < out.len() {
            positions.push(start);
        }
    }
    Ok((out, positions))
}

struct TParser {
    toks: Vec<TTok>,
    pos: Vec<(usize, usize)>,
    i: usize,
}

impl TParser {
    fn pipeline(&mut self) -> Result<Pipeline, String> {
        let mut cmds = Vec::new();
        loop {
            let mut args = Vec::new();
            let (line, col) = self.pos.get(self.i).copied().unwrap_or((1, 0));
            while self.i < self.toks.len() {
                match self.toks[self.i].clone() {
                    TTok::Pipe | TTok::RParen => break,
                    TTok::LParen => {
                        self.i += 1;
                        let p = self.pipeline()?;
                        if self.toks.get(self.i) != Some(&TTok::RParen) {
                            return Err("unclosed left paren".into());
                        }
                        self.i += 1;
                        let f = match self.toks.get(self.i) {
                            Some(TTok::Field(f)) => {
                                let f = f.clone();
                                self.i += 1;
                                f
                            }
                            _ => Vec::new(),
                        };
                        args.push(Operand::Sub(p, f));
                        continue;
                    }
                    TTok::Field(f) => args.push(Operand::Field(f)),
                    TTok::Str(s) => args.push(Operand::Str(s)),
                    TTok::Num(v, i) => args.push(Operand::Num(v, i)),
                    TTok::Ident(name, f) => {
                        if !FUNCS.contains(&name.as_str()) {
                            return Err(format!("function {name:?} not defined"));
                        }
                        if f.is_empty() {
                            args.push(Operand::Func(name))
                        } else {
                            args.push(Operand::FuncField(name, f))
                        }
                    }
                }
                self.i += 1;
            }
            if args.is_empty() {
                return Err("missing value for command".into());
            }
            cmds.push(Cmd { args, line, col });
            if self.toks.get(self.i) == Some(&TTok::Pipe) {
                self.i += 1;
                continue;
            }
            return Ok(Pipeline { cmds });
        }
    }
}

fn eval_pipeline(p: &Pipeline, sc: &dyn Scope) -> Result<Val, String> {
    let mut prev: Option<Val> = None;
    for c in &p.cmds {
        prev = Some(eval_cmd(c, sc, prev)?);
    }
    Ok(prev.unwrap_or(Val::Nil))
}

fn field_of(v: Val, fields: &[String]) -> Val {
    let mut v = v;
    for f in fields {
        v = match v {
            Val::Json(serde_json::Value::Object(m)) => m.get(f).cloned().map(json_val).unwrap_or(Val::Nil),
            Val::Time(ns) if f == "Unix" => Val::Int(ns.div_euclid(1_000_000_000)),
            Val::Time(ns) if f == "UnixMilli" => Val::Int(ns.div_euclid(1_000_000)),
            Val::Time(ns) if f == "UnixNano" => Val::Int(ns),
            _ => Val::Nil,
        }
    }
    v
}

fn json_val(v: serde_json::Value) -> Val {
    match v {
        serde_json::Value::String(s) => Val::Str(s),
        serde_json::Value::Number(n) => Val::Float(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::Bool(b) => Val::Bool(b),
        serde_json::Value::Null => Val::Nil,
        o => Val::Json(o),
    }
}

fn eval_operand(o: &Operand, sc: &dyn Scope) -> Result<Val, String> {
    Ok(match o {
        Operand::Field(f) => {
            if f.is_empty() {
                Val::Nil
            } else {
                let v = Val::Str(sc.label(&f[0]).unwrap_or("").to_string());
                if f.len() > 1 { Val::Nil } else { v }
            }
        }
        Operand::Str(s) => Val::Str(s.clone()),
        Operand::Num(v, is_int) => {
            if *is_int {
                Val::Int(*v as i64)
            } else {
                Val::Float(*v)
            }
        }
        Operand::Sub(p, f) => field_of(eval_pipeline(p, sc)?, f),
        Operand::Func(name) => call(name, Vec::new(), sc)?,
        Operand::FuncField(name, f) => field_of(call(name, Vec::new(), sc)?, f),
    })
}

fn eval_cmd(c: &Cmd, sc: &dyn Scope, prev: Option<Val>) -> Result<Val, String> {
    match &c.args[0] {
        Operand::Func(name) => {
            let mut args = Vec::new();
            for a in &c.args[1..] {
                args.push(eval_operand(a, sc)?);
            }
            if let Some(p) = prev {
                args.push(p);
            }
            call(name, args, sc).map_err(|e| {
                if e.starts_with("template: ") {
                    return e;
                }
                // Go's ExecError: the template name is filled in by `render`.
                format!(
                    "template: \u{0}NAME:{}:{}: executing \"\u{0}NAME\" at <{}>: error calling {name}: {e}",
                    c.line,
                    c.col,
                    cmd_string(c)
                )
            })
        }
        o => {
            if c.args.len() > 1 {
                return Err("can't give argument to non-function".into());
            }
            eval_operand(o, sc)
        }
    }
}

fn operand_string(o: &Operand) -> String {
    match o {
        Operand::Field(f) => {
            if f.is_empty() {
                ".".into()
            } else {
                f.iter().map(|x| format!(".{x}")).collect()
            }
        }
        Operand::Func(n) => n.clone(),
        Operand::FuncField(n, f) => format!("{n}{}", f.iter().map(|x| format!(".{x}")).collect::<String>()),
        Operand::Str(s) => super::parser::go_quote(s),
        Operand::Num(v, _) => go_float_g(*v),
        Operand::Sub(p, f) => format!(
            "({}){}",
            p.cmds.iter().map(cmd_string).collect::<Vec<_>>().join(" | "),
            f.iter().map(|x| format!(".{x}")).collect::<String>()
        ),
    }
}

/// Go's `CommandNode.String()`.
fn cmd_string(c: &Cmd) -> String {
    c.args.iter().map(operand_string).collect::<Vec<_>>().join(" ")
}

pub fn to_str(v: &Val) -> String {
    let mut s = String::new();
    write_val(v, &mut s);
    s
}

fn write_val(v: &Val, out: &mut String) {
    match v {
        Val::Str(s) => out.push_str(s),
        Val::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Val::Float(f) => out.push_str(&go_float_g(*f)),
        Val::Bool(b) => {
            let _ = write!(out, "{b}");
        }
        Val::Time(ns) => out.push_str(&go_time_string(*ns)),
        Val::Json(j) => out.push_str(&go_json_print(j)),
        Val::Nil => out.push_str("<no value>"),
    }
}

fn go_json_print(j: &serde_json::Value) -> String {
    match j {
        serde_json::Value::Object(m) => {
            let mut keys: Vec<_> = m.keys().collect();
            keys.sort();
            let parts: Vec<String> = keys.iter().map(|k| format!("{k}:{}", go_json_print(&m[*k]))).collect();
            format!("map[{}]", parts.join(" "))
        }
        serde_json::Value::Array(a) => {
            format!("[{}]", a.iter().map(go_json_print).collect::<Vec<_>>().join(" "))
        }
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => go_float_g(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::Bool(b) => b.to_string(),
        serde_json::Value::Null => "<nil>".into(),
    }
}

/// Go's `%v` for a float64 (`strconv.FormatFloat(f, 'g', -1, 64)`): shortest digits, exponent
/// form when the decimal exponent is below -4 or at least 6 (`'g'` with shortest precision
/// decides with precision 6).
pub fn go_float_g(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "+Inf".into() } else { "-Inf".into() };
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0".into() } else { "0".into() };
    }
    let exp = f.abs().log10().floor() as i32;
    if !(-4..6).contains(&exp) {
        let s = format!("{f:e}");
        // Rust: 1e21 / 1.5e-5; Go: 1e+21 / 1.5e-05
        let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
        let (sign, digits) = match e.strip_prefix('-') {
            Some(d) => ('-', d),
            None => ('+', e),
        };
        let digits = if digits.len() < 2 {
            format!("0{digits}")
        } else {
            digits.to_string()
        };
        return format!("{m}e{sign}{digits}");
    }
    format!("{f}")
}

/// Go `time.Time.String()` in UTC: `2026-11-20 10:00:00.332 +0000 UTC`.
pub fn go_time_string(ns: i64) -> String {
    let mut s = go_date("2006-01-02 15:04:05", ns);
    let frac = ns.rem_euclid(1_000_000_000);
    if frac != 0 {
        let f = format!("{frac:09}");
        s.push('.');
        s.push_str(f.trim_end_matches('0'));
    }
    s.push_str(" +0000 UTC");
    s
}

/// Go time layout formatting (UTC), for the layout elements Loki users write.
pub fn go_date(layout: &str, ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let frac = ns.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86400);
    let sod = secs.rem_euclid(86400);
    let (y, mo, d) = crate::model::text::civil_from_days(days);
    let (h, mi, s) = (sod / 3600, (sod % 3600) / 60, sod % 60);
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    let wd = DAYS[days.rem_euclid(7) as usize];
    let mut out = String::new();
    let mut r = layout;
    let pats: &[&str] = &[
        "2006",
        "January",
        "Jan",
        "Monday",
        "Mon",
        "01",
        "02",
        "_2",
        "15",
        "03",
        "04",
        "05",
        "06",
        "PM",
        "pm",
        "MST",
        "Z07:00",
        "-07:00",
        "Z0700",
        "-0700",
        ".000000000",
        ".000000",
        ".000",
        ".999999999",
        ".999999",
        ".999",
        "1",
        "2",
        "3",
        "4",
        "5",
    ];
    'outer: while !r.is_empty() {
        for p in pats {
            if let Some(rest) = r.strip_prefix(p) {
                match *p {
                    "2006" => out.push_str(&format!("{y:04}")),
                    "06" => out.push_str(&format!("{:02}", y % 100)),
                    "January" => out.push_str(
                        [
                            "January",
                            "February",
                            "March",
                            "April",
                            "May",
                            "June",
                            "July",
                            "August",
                            "September",
                            "October",
                            "November",
                            "December",
                        ][mo as usize - 1],
                    ),
                    "Jan" => out.push_str(MONTHS[mo as usize - 1]),
                    "Monday" => out.push_str(match wd {
                        "Mon" => "Monday",
                        "Tue" => "Tuesday",
                        "Wed" => "Wednesday",
                        "Thu" => "Thursday",
                        "Fri" => "Friday",
                        "Sat" => "Saturday",
                        _ => "Sunday",
                    }),
                    "Mon" => out.push_str(wd),
                    "01" => out.push_str(&format!("{mo:02}")),
                    "1" => out.push_str(&format!("{mo}")),
                    "02" => out.push_str(&format!("{d:02}")),
                    "_2" => out.push_str(&format!("{d:>2}")),
                    "2" => out.push_str(&format!("{d}")),
                    "15" => out.push_str(&format!("{h:02}")),
                    "03" => out.push_str(&format!("{:02}", if h % 12 == 0 { 12 } else { h % 12 })),
                    "3" => out.push_str(&format!("{}", if h % 12 == 0 { 12 } else { h % 12 })),
                    "04" => out.push_str(&format!("{mi:02}")),
                    "4" => out.push_str(&format!("{mi}")),
                    "05" => out.push_str(&format!("{s:02}")),
                    "5" => out.push_str(&format!("{s}")),
                    "PM" => out.push_str(if h >= 12 { "PM" } else { "AM" }),
                    "pm" => out.push_str(if h >= 12 { "pm" } else { "am" }),
                    "MST" => out.push_str("UTC"),
                    "Z07:00" | "Z0700" => out.push('Z'),
                    "-07:00" => out.push_str("+00:00"),
                    "-0700" => out.push_str("+0000"),
                    _ if p.starts_with(".0") => {
                        let n = p.len() - 1;
                        out.push('.');
                        out.push_str(&format!("{frac:09}")[..n]);
                    }
                    _ if p.starts_with(".9") => {
                        let n = p.len() - 1;
                        let f = format!("{frac:09}");
                        let t = f[..n].trim_end_matches('0');
                        if !t.is_empty() {
                            out.push('.');
                            out.push_str(t);
                        }
                    }
                    _ => {}
                }
                r = rest;
                continue 'outer;
            }
        }
        let ch = r.chars().next().unwrap_or(' ');
        out.push(ch);
        r = &r[ch.len_utf8()..];
    }
    out
}

fn as_str(v: &Val) -> String {
    to_str(v)
}

/// spf13/cast ToInt64: strings parse as base-0 integers, failures give 0.
fn to_i64(v: &Val) -> i64 {
    match v {
        Val::Int(i) => *i,
        Val::Float(f) => *f as i64,
        Val::Bool(b) => *b as i64,
        Val::Str(s) => {
            let t = s.trim();
            t.parse::<i64>().unwrap_or(0)
        }
        Val::Time(ns) => *ns,
        _ => 0,
    }
}

fn to_f64(v: &Val) -> f64 {
    match v {
        Val::Int(i) => *i as f64,
        Val::Float(f) => *f,
        Val::Bool(b) => *b as i64 as f64,
        Val::Str(s) => s.trim().parse::<f64>().unwrap_or(0.0),
        _ => 0.0,
    }
}

fn is_empty(v: &Val) -> bool {
    match v {
        Val::Str(s) => s.is_empty(),
        Val::Int(i) => *i == 0,
        Val::Float(f) => *f == 0.0,
        Val::Bool(b) => !b,
        Val::Nil => true,
        Val::Json(j) => match j {
            serde_json::Value::Object(m) => m.is_empty(),
            serde_json::Value::Array(a) => a.is_empty(),
            _ => false,
        },
        Val::Time(_) => false,
    }
}

fn arg(args: &[Val], i: usize) -> Result<&Val, String> {
    args.get(i).ok_or_else(|| "wrong number of args".to_string())
}

fn s(args: &[Val], i: usize) -> Result<String, String> {
    Ok(as_str(arg(args, i)?))
}

fn call(name: &str, args: Vec<Val>, sc: &dyn Scope) -> Result<Val, String> {
    let a = &args;
    Ok(match name {
        "__line__" => Val::Str(sc.line().to_string()),
        "__timestamp__" => Val::Time(sc.ts_ns()),
        "ToLower" | "lower" => Val::Str(s(a, 0)?.to_lowercase()),
        "ToUpper" | "upper" => Val::Str(s(a, 0)?.to_uppercase()),
        "title" => {
            let t = s(a, 0)?;
            let mut out = String::new();
            let mut prev_letter = false;
            for c in t.chars() {
                if !prev_letter && c.is_alphabetic() {
                    out.extend(c.to_uppercase());
                } else {
                    out.push(c);
                }
                prev_letter = c.is_alphanumeric();
            }
            Val::Str(out)
        }
        "Replace" => {
            let n = to_i64(arg(a, 3)?);
            let (src, old, new) = (s(a, 0)?, s(a, 1)?, s(a, 2)?);
            Val::Str(if n < 0 {
                src.replace(&old, &new)
            } else {
                src.replacen(&old, &new, n as usize)
            })
        }
        "replace" => Val::Str(s(a, 2)?.replace(&s(a, 0)?, &s(a, 1)?)),
        "Trim" => {
            let cut = s(a, 1)?;
            Val::Str(s(a, 0)?.trim_matches(|c| cut.contains(c)).to_string())
        }
        "trimAll" => {
            let cut = s(a, 0)?;
            Val::Str(s(a, 1)?.trim_matches(|c| cut.contains(c)).to_string())
        }
        "TrimLeft" => {
            let cut = s(a, 1)?;
            Val::Str(s(a, 0)?.trim_start_matches(|c| cut.contains(c)).to_string())
        }
        "TrimRight" => {
            let cut = s(a, 1)?;
            Val::Str(s(a, 0)?.trim_end_matches(|c| cut.contains(c)).to_string())
        }
        "TrimPrefix" => {
            let (x, p) = (s(a, 0)?, s(a, 1)?);
            Val::Str(x.strip_prefix(p.as_str()).unwrap_or(&x).to_string())
        }
        "TrimSuffix" => {
            let (x, p) = (s(a, 0)?, s(a, 1)?);
            Val::Str(x.strip_suffix(p.as_str()).unwrap_or(&x).to_string())
        }
        "trimPrefix" => {
            let (p, x) = (s(a, 0)?, s(a, 1)?);
            Val::Str(x.strip_prefix(p.as_str()).unwrap_or(&x).to_string())
        }
        "trimSuffix" => {
            let (p, x) = (s(a, 0)?, s(a, 1)?);
            Val::Str(x.strip_suffix(p.as_str()).unwrap_or(&x).to_string())
        }
        "TrimSpace" | "trim" => Val::Str(s(a, 0)?.trim().to_string()),
        "trunc" => {
            let n = to_i64(arg(a, 0)?);
            let x = s(a, 1)?;
            let b = x.as_bytes();
            let cut = if n < 0 {
                let k = (b.len() as i64 + n).max(0) as usize;
                &b[k..]
            } else if (n as usize) < b.len() {
                &b[..n as usize]
            } else {
                b
            };
            Val::Str(lossy_bytes(cut))
        }
        "substr" => {
            let (st, en) = (to_i64(arg(a, 0)?), to_i64(arg(a, 1)?));
            let x = s(a, 2)?;
            let b = x.as_bytes();
            let st = st.clamp(0, b.len() as i64) as usize;
            let en = if en < 0 || en as usize > b.len() {
                b.len()
            } else {
                en as usize
            };
            Val::Str(String::from_utf8_lossy(&b[st.min(en)..en]).into_owned())
        }
        "contains" => Val::Bool(s(a, 1)?.contains(&s(a, 0)?)),
        "hasPrefix" => Val::Bool(s(a, 1)?.starts_with(&s(a, 0)?)),
        "hasSuffix" => Val::Bool(s(a, 1)?.ends_with(&s(a, 0)?)),
        "repeat" => Val::Str(s(a, 1)?.repeat(to_i64(arg(a, 0)?).max(0) as usize)),
        "indent" | "nindent" => {
            let pad = " ".repeat(to_i64(arg(a, 0)?).max(0) as usize);
            let t = format!("{pad}{}", s(a, 1)?.replace('\n', &format!("\n{pad}")));
            Val::Str(if name == "nindent" { format!("\n{t}") } else { t })
        }
        "regexReplaceAll" | "regexReplaceAllLiteral" => {
            let re = super::parser::compile_regex(&s(a, 0)?)?;
            let (x, r) = (s(a, 1)?, s(a, 2)?);
            Val::Str(if name == "regexReplaceAll" {
                re.replace_all(&x, r.as_str()).into_owned()
            } else {
                re.replace_all(&x, regex::NoExpand(&r)).into_owned()
            })
        }
        "count" => Val::Int(s(a, 1)?.matches(&s(a, 0)?).count() as i64),
        "urlencode" => Val::Str(query_escape(&s(a, 0)?)),
        "urldecode" => Val::Str(query_unescape(&s(a, 0)?).ok_or("invalid URL escape")?),
        "b64enc" => Val::Str(b64enc(s(a, 0)?.as_bytes())),
        "b64dec" => Val::Str(
            b64dec(&s(a, 0)?)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default(),
        ),
        "bytes" => {
            let x = s(a, 0)?;
            match super::parser::parse_bytes(&x) {
                // humanize.ParseBytes yields a uint64; Loki hands it on as a float64.
                Some(v) => Val::Float(v.trunc()),
                None => {
                    let num: String = x
                        .chars()
                        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ',')
                        .collect();
                    if num.parse::<f64>().is_err() {
                        return Err(format!(
                            "strconv.ParseFloat: parsing {}: invalid syntax",
                            super::parser::go_quote(&num)
                        ));
                    }
                    return Err(format!("unhandled size name: {}", x[num.len()..].trim().to_lowercase()));
                }
            }
        }
        "duration" | "duration_seconds" => Val::Float(
            super::parser::parse_duration(&s(a, 0)?)
                .map(super::parser::duration_seconds)
                .unwrap_or(0.0),
        ),
        "add" => Val::Int(a.iter().map(to_i64).sum()),
        "mul" => Val::Int(a.iter().map(to_i64).product()),
        "sub" => Val::Int(to_i64(arg(a, 0)?) - to_i64(arg(a, 1)?)),
        "div" => {
            let d = to_i64(arg(a, 1)?);
            if d == 0 {
                return Err("runtime error: integer divide by zero".into());
            }
            Val::Int(to_i64(arg(a, 0)?) / d)
        }
        "mod" => {
            let d = to_i64(arg(a, 1)?);
            if d == 0 {
                return Err("runtime error: integer divide by zero".into());
            }
            Val::Int(to_i64(arg(a, 0)?) % d)
        }
        "addf" => Val::Float(a.iter().map(to_f64).sum()),
        "mulf" => Val::Float(a.iter().map(to_f64).product()),
        "subf" => Val::Float(a.iter().skip(1).fold(to_f64(arg(a, 0)?), |x, y| x - to_f64(y))),
        "divf" => Val::Float(a.iter().skip(1).fold(to_f64(arg(a, 0)?), |x, y| x / to_f64(y))),
        "max" => Val::Int(a.iter().map(to_i64).max().unwrap_or(0)),
        "min" => Val::Int(a.iter().map(to_i64).min().unwrap_or(0)),
        "maxf" => Val::Float(a.iter().map(to_f64).fold(f64::MIN, f64::max)),
        "minf" => Val::Float(a.iter().map(to_f64).fold(f64::MAX, f64::min)),
        "ceil" => Val::Float(to_f64(arg(a, 0)?).ceil()),
        "floor" => Val::Float(to_f64(arg(a, 0)?).floor()),
        "round" => {
            let v = to_f64(arg(a, 0)?);
            let p = a.get(1).map(to_i64).unwrap_or(0) as i32;
            let m = 10f64.powi(p);
            Val::Float((v * m).round() / m)
        }
        "int" => Val::Int(to_i64(arg(a, 0)?)),
        "float64" => Val::Float(to_f64(arg(a, 0)?)),
        "default" => {
            let given = a.get(1);
            match given {
                Some(v) if !is_empty(v) => v.clone(),
                _ => arg(a, 0)?.clone(),
            }
        }
        "len" => Val::Int(match arg(a, 0)? {
            Val::Str(x) => x.len() as i64,
            Val::Json(serde_json::Value::Object(m)) => m.len() as i64,
            Val::Json(serde_json::Value::Array(v)) => v.len() as i64,
            _ => return Err("len of type".into()),
        }),
        "fromJson" => match serde_json::from_str::<serde_json::Value>(&s(a, 0)?) {
            Ok(v) => json_val(v),
            Err(_) => Val::Str(String::new()),
        },
        "date" => {
            let t = match arg(a, 1)? {
                Val::Time(ns) => *ns,
                v => to_i64(v) * 1_000_000_000,
            };
            Val::Str(go_date(&s(a, 0)?, t))
        }
        "unixEpoch" => Val::Int(time_of(arg(a, 0)?).div_euclid(1_000_000_000)),
        "unixEpochMillis" => Val::Int(time_of(arg(a, 0)?).div_euclid(1_000_000)),
        "unixEpochNanos" => Val::Int(time_of(arg(a, 0)?)),
        "unixToTime" => Val::Time(s(a, 0)?.parse::<i64>().map_err(|e| e.to_string())? * 1_000_000_000),
        "alignLeft" => {
            let n = to_i64(arg(a, 0)?).max(0) as usize;
            let x = s(a, 1)?;
            let c: Vec<char> = x.chars().collect();
            Val::Str(if c.len() >= n {
                c[..n].iter().collect()
            } else {
                format!("{x:<n$}")
            })
        }
        "alignRight" => {
            let n = to_i64(arg(a, 0)?).max(0) as usize;
            let x = s(a, 1)?;
            let c: Vec<char> = x.chars().collect();
            Val::Str(if c.len() >= n {
                c[c.len() - n..].iter().collect()
            } else {
                format!("{x:>n$}")
            })
        }
        "printf" => Val::Str(go_printf(&s(a, 0)?, &a[1..])),
        "print" => Val::Str(a.iter().map(as_str).collect::<Vec<_>>().join("")),
        "println" => Val::Str(format!("{}\n", a.iter().map(as_str).collect::<Vec<_>>().join(" "))),
        "eq" => Val::Bool(as_str(arg(a, 0)?) == as_str(arg(a, 1)?)),
        "ne" => Val::Bool(as_str(arg(a, 0)?) != as_str(arg(a, 1)?)),
        "lt" => Val::Bool(to_f64(arg(a, 0)?) < to_f64(arg(a, 1)?)),
        "le" => Val::Bool(to_f64(arg(a, 0)?) <= to_f64(arg(a, 1)?)),
        "gt" => Val::Bool(to_f64(arg(a, 0)?) > to_f64(arg(a, 1)?)),
        "ge" => Val::Bool(to_f64(arg(a, 0)?) >= to_f64(arg(a, 1)?)),
        "not" => Val::Bool(is_empty(arg(a, 0)?)),
        "and" => a.iter().find(|v| is_empty(v)).or(a.last()).cloned().unwrap_or(Val::Nil),
        "or" => a
            .iter()
            .find(|v| !is_empty(v))
            .or(a.last())
            .cloned()
            .unwrap_or(Val::Nil),
        "index" => match (arg(a, 0)?, arg(a, 1)?) {
            (Val::Json(serde_json::Value::Object(m)), k) => {
                m.get(&as_str(k)).cloned().map(json_val).unwrap_or(Val::Nil)
            }
            (Val::Json(serde_json::Value::Array(v)), k) => {
                v.get(to_i64(k) as usize).cloned().map(json_val).unwrap_or(Val::Nil)
            }
            _ => Val::Nil,
        },
        "now" => Val::Time(0),
        "toDate" => Val::Time(0),
        _ => return Err(format!("function {name:?} not defined")),
    })
}

/// Invalid UTF-8 as Go's JSON encoder shows it: one U+FFFD per invalid byte.
fn lossy_bytes(b: &[u8]) -> String {
    let mut out = String::new();
    let mut rest = b;
    while !rest.is_empty() {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                out.push_str(s);
                break;
            }
            Err(e) => {
                let (good, bad) = rest.split_at(e.valid_up_to());
                out.push_str(std::str::from_utf8(good).unwrap_or(""));
                out.push('\u{FFFD}');
                rest = &bad[1..];
            }
        }
    }
    out
}

fn time_of(v: &Val) -> i64 {
    match v {
        Val::Time(ns) => *ns,
        v => to_i64(v),
    }
}

fn go_printf(fmt: &str, args: &[Val]) -> String {
    let mut out = String::new();
    let mut it = fmt.chars().peekable();
    let mut ai = 0;
    while let Some(c) = it.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut spec = String::new();
        while let Some(&n) = it.peek() {
            spec.push(n);
            it.next();
            if n.is_ascii_alphabetic() || n == '%' {
                break;
            }
        }
        let verb = spec.chars().last().unwrap_or('v');
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(v) = args.get(ai) else {
            out.push_str(&format!("%!{verb}(MISSING)"));
            continue;
        };
        ai += 1;
        let prec: Option<usize> = spec.split_once('.').and_then(|(_, p)| p[..p.len() - 1].parse().ok());
        match verb {
            'q' => out.push_str(&super::parser::go_quote(&as_str(v))),
            'd' => out.push_str(&to_i64(v).to_string()),
            'f' | 'F' => out.push_str(&format!("{:.*}", prec.unwrap_or(6), to_f64(v))),
            'x' => out.push_str(&format!("{:x}", to_i64(v))),
            _ => out.push_str(&as_str(v)),
        }
    }
    out
}

fn query_escape(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => o.push(b as char),
            b' ' => o.push('+'),
            _ => o.push_str(&format!("%{b:02X}")),
        }
    }
    o
}

fn query_unescape(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut o = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => o.push(b' '),
            b'%' => {
                let h = s.get(i + 1..i + 3)?;
                o.push(u8::from_str_radix(h, 16).ok()?);
                i += 2;
            }
            c => o.push(c),
        }
        i += 1;
    }
    String::from_utf8(o).ok()
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn b64enc(b: &[u8]) -> String {
    let mut o = String::new();
    for ch in b.chunks(3) {
        let n =
            (u32::from(ch[0]) << 16) | (u32::from(*ch.get(1).unwrap_or(&0)) << 8) | u32::from(*ch.get(2).unwrap_or(&0));
        for k in 0..4 {
            if k <= ch.len() {
                o.push(B64[((n >> (18 - 6 * k)) & 63) as usize] as char);
            } else {
                o.push('=');
            }
        }
    }
    o
}

fn b64dec(s: &str) -> Option<Vec<u8>> {
    let mut o = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        if c == b'=' {
            break;
        }
        let v = B64.iter().position(|x| *x == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            o.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(o)
}
