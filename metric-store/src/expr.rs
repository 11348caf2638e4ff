//! Metric math for GetMetricData: `SUM`, `AVG`, `MIN`, `MAX` and
//! `METRICS()`, numbers, query ids, `+ - * /` and parentheses.
//!
//! As in CloudWatch: a function of one series is a number (AVG(m1) is the
//! average of all m1's points), of several series (METRICS()) a series,
//! point by point; arithmetic on two series keeps the times both have.

use std::collections::BTreeMap;

/// A series: its points by time (Unix seconds).
pub type Series = BTreeMap<i64, f64>;

/// What an expression gives.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Number(f64),
    Series(Series),
    /// Several series (METRICS()), each with its query id.
    Many(Vec<(String, Series)>),
}

#[derive(Clone, Debug, PartialEq)]
enum Expr {
    Number(f64),
    Id(String),
    Text(String),
    Call(String, Vec<Expr>),
    Neg(Box<Expr>),
    Op(char, Box<Expr>, Box<Expr>),
}

/// Parses `text`; the error says where it went wrong.
fn parse(text: &str) -> Result<Expr, String> {
    let toks = tokens(text)?;
    let mut p = Parser { toks, at: 0 };
    let e = p.sum()?;
    if p.at != p.toks.len() {
        return Err(format!("Unexpected '{}'", p.toks[p.at]));
    }
    Ok(e)
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Num(f64),
    Word(String),
    Text(String),
    Sym(char),
}

impl std::fmt::Display for Tok {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tok::Num(n) => write!(f, "{n}"),
            Tok::Word(w) => write!(f, "{w}"),
            Tok::Text(t) => write!(f, "\"{t}\""),
            Tok::Sym(c) => write!(f, "{c}"),
        }
    }
}

fn tokens(text: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_digit() || c == '.' {
            let s = i;
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                i += 1;
            }
            let t: String = chars[s..i].iter().collect();
            out.push(Tok::Num(t.parse().map_err(|_| format!("Bad number {t}"))?));
        } else if c.is_ascii_alphabetic() || c == '_' {
            let s = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Tok::Word(chars[s..i].iter().collect()));
        } else if c == '\'' || c == '"' {
            let s = i + 1;
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += 1;
            }
            if i == chars.len() {
                return Err("Unterminated string".into());
            }
            out.push(Tok::Text(chars[s..i].iter().collect()));
            i += 1;
        } else if "+-*/(),".contains(c) {
            out.push(Tok::Sym(c));
            i += 1;
        } else {
            return Err(format!("Unexpected character '{c}'"));
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at)
    }

    fn sym(&mut self, c: char) -> bool {
        if self.peek() == Some(&Tok::Sym(c)) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn sum(&mut self) -> Result<Expr, String> {
        let mut e = self.product()?;
        loop {
            let op = if self.sym('+') {
                '+'
            } else if self.sym('-') {
                '-'
            } else {
                return Ok(e);
            };
            e = Expr::Op(op, Box::new(e), Box::new(self.product()?));
        }
    }

    fn product(&mut self) -> Result<Expr, String> {
        let mut e = self.unary()?;
        loop {
            let op = if self.sym('*') {
                '*'
            } else if self.sym('/') {
                '/'
            } else {
                return Ok(e);
            };
            e = Expr::Op(op, Box::new(e), Box::new(self.unary()?));
        }
    }

    fn unary(&mut self) -> Result<Expr, String> {
        if self.sym('-') {
            return Ok(Expr::Neg(Box::new(self.unary()?)));
        }
        let Some(t) = self.peek().cloned() else {
            return Err("Unexpected end of expression".into());
        };
        self.at += 1;
        match t {
            Tok::Num(n) => Ok(Expr::Number(n)),
            Tok::Text(s) => Ok(Expr::Text(s)),
            Tok::Sym('(') => {
                let e = self.sum()?;
                if !self.sym(')') {
                    return Err("Missing ')'".into());
                }
                Ok(e)
            }
            Tok::Word(w) => {
                if self.sym('(') {
                    let mut args = Vec::new();
                    if !self.sym(')') {
                        loop {
                            args.push(self.sum()?);
                            if self.sym(')') {
                                break;
                            }
                            if !self.sym(',') {
                                return Err("Expected ',' or ')'".into());
                            }
                        }
                    }
                    Ok(Expr::Call(w, args))
                } else {
                    Ok(Expr::Id(w))
                }
            }
            Tok::Sym(c) => Err(format!("Unexpected '{c}'")),
        }
    }
}

/// Evaluates `text` with `series` (the other queries' results by id) and
/// `metric_ids` (the ids of the metric queries, for METRICS()).
pub fn evaluate(
    text: &str,
    series: &BTreeMap<String, Series>,
    metric_ids: &[String],
) -> Result<Value, String> {
    eval(&parse(text)?, series, metric_ids)
}

/// The ids `text` refers to (to evaluate what it needs first).
pub fn references(text: &str, metric_ids: &[String]) -> Result<Vec<String>, String> {
    fn walk(e: &Expr, ids: &[String], out: &mut Vec<String>) {
        match e {
            Expr::Id(i) => out.push(i.clone()),
            Expr::Call(f, args) if f == "METRICS" => {
                let want = match args.first() {
                    Some(Expr::Text(t)) => t.clone(),
                    _ => String::new(),
                };
                out.extend(ids.iter().filter(|i| i.contains(&want)).cloned());
            }
            Expr::Call(_, args) => args.iter().for_each(|a| walk(a, ids, out)),
            Expr::Neg(a) => walk(a, ids, out),
            Expr::Op(_, a, b) => {
                walk(a, ids, out);
                walk(b, ids, out);
            }
            Expr::Number(_) | Expr::Text(_) => {}
        }
    }
    let mut out = Vec::new();
    walk(&parse(text)?, metric_ids, &mut out);
    Ok(out)
}

fn eval(e: &Expr, series: &BTreeMap<String, Series>, ids: &[String]) -> Result<Value, String> {
    Ok(match e {
        Expr::Number(n) => Value::Number(*n),
        Expr::Text(t) => return Err(format!("Unexpected string '{t}'")),
        Expr::Id(i) => Value::Series(
            series
                .get(i)
                .cloned()
                .ok_or_else(|| format!("Unrecognized metric id: {i}"))?,
        ),
        Expr::Neg(a) => arith('*', eval(a, series, ids)?, Value::Number(-1.0))?,
        Expr::Op(op, a, b) => arith(*op, eval(a, series, ids)?, eval(b, series, ids)?)?,
        Expr::Call(f, args) if f == "METRICS" => {
            let want = match args.as_slice() {
                [] => String::new(),
                [Expr::Text(t)] => t.clone(),
                _ => return Err("METRICS takes at most one string".into()),
            };
            Value::Many(
                ids.iter()
                    .filter(|i| i.contains(&want))
                    .filter_map(|i| Some((i.clone(), series.get(i)?.clone())))
                    .collect(),
            )
        }
        Expr::Call(f, args) => {
            let [arg] = args.as_slice() else {
                return Err(format!("{f} takes one argument"));
            };
            let fold = |vals: &[f64]| -> Option<f64> {
                if vals.is_empty() {
                    return None;
                }
                Some(match f.as_str() {
                    "SUM" => vals.iter().sum(),
                    "AVG" => vals.iter().sum::<f64>() / vals.len() as f64,
                    "MIN" => vals.iter().copied().fold(f64::INFINITY, f64::min),
                    _ => vals.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                })
            };
            if !["SUM", "AVG", "MIN", "MAX"].contains(&f.as_str()) {
                return Err(format!("Unsupported function {f}"));
            }
            match eval(arg, series, ids)? {
                Value::Number(n) => Value::Number(n),
                Value::Series(s) => {
                    let vals: Vec<f64> = s.values().copied().collect();
                    Value::Number(fold(&vals).unwrap_or(f64::NAN))
                }
                Value::Many(all) => {
                    let mut at: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
                    for (_, s) in &all {
                        for (t, v) in s {
                            at.entry(*t).or_default().push(*v);
                        }
                    }
                    Value::Series(
                        at.into_iter()
                            .filter_map(|(t, v)| Some((t, fold(&v)?)))
                            .collect(),
                    )
                }
            }
        }
    })
}

fn apply(op: char, a: f64, b: f64) -> Option<f64> {
    let v = match op {
        '+' => a + b,
        '-' => a - b,
        '*' => a * b,
        _ => {
            if b == 0.0 {
                return None;
            }
            a / b
        }
    };
    v.is_finite().then_some(v)
}

fn arith(op: char, a: Value, b: Value) -> Result<Value, String> {
    let map = |s: Series, f: &dyn Fn(f64) -> Option<f64>| -> Series {
        s.into_iter()
            .filter_map(|(t, v)| Some((t, f(v)?)))
            .collect()
    };
    Ok(match (a, b) {
        (Value::Number(x), Value::Number(y)) => Value::Number(apply(op, x, y).unwrap_or(f64::NAN)),
        (Value::Series(s), Value::Number(y)) => Value::Series(map(s, &|v| apply(op, v, y))),
        (Value::Number(x), Value::Series(s)) => Value::Series(map(s, &|v| apply(op, x, v))),
        (Value::Series(s), Value::Series(r)) => Value::Series(
            s.into_iter()
                .filter_map(|(t, v)| Some((t, apply(op, v, *r.get(&t)?)?)))
                .collect(),
        ),
        (Value::Many(all), other) => Value::Many(
            all.into_iter()
                .map(
                    |(id, s)| match arith(op, Value::Series(s), other.clone())? {
                        Value::Series(s) => Ok((id, s)),
                        _ => Err("Cannot combine these series".to_string()),
                    },
                )
                .collect::<Result<_, _>>()?,
        ),
        (a @ Value::Number(_), Value::Many(all)) | (a @ Value::Series(_), Value::Many(all)) => {
            Value::Many(
                all.into_iter()
                    .map(|(id, s)| match arith(op, a.clone(), Value::Series(s))? {
                        Value::Series(s) => Ok((id, s)),
                        _ => Err("Cannot combine these series".to_string()),
                    })
                    .collect::<Result<_, _>>()?,
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> (BTreeMap<String, Series>, Vec<String>) {
        let mut m = BTreeMap::new();
        m.insert("m1".to_string(), Series::from([(0, 1.0), (60, 3.0)]));
        m.insert(
            "m2".to_string(),
            Series::from([(0, 10.0), (60, 20.0), (120, 5.0)]),
        );
        (m, vec!["m1".into(), "m2".into()])
    }

    #[test]
    fn functions_of_one_series_are_numbers_of_many_series() {
        let (m, ids) = env();
        assert_eq!(evaluate("AVG(m1)", &m, &ids), Ok(Value::Number(2.0)));
        assert_eq!(evaluate("MAX(m2)", &m, &ids), Ok(Value::Number(20.0)));
        assert_eq!(
            evaluate("SUM(METRICS())", &m, &ids),
            Ok(Value::Series(Series::from([
                (0, 11.0),
                (60, 23.0),
                (120, 5.0)
            ])))
        );
        assert_eq!(
            evaluate("MIN(METRICS('2'))", &m, &ids),
            Ok(Value::Series(Series::from([
                (0, 10.0),
                (60, 20.0),
                (120, 5.0)
            ])))
        );
    }

    #[test]
    fn arithmetic_keeps_common_times() {
        let (m, ids) = env();
        assert_eq!(
            evaluate("(m1 + m2) / 2", &m, &ids),
            Ok(Value::Series(Series::from([(0, 5.5), (60, 11.5)])))
        );
        assert_eq!(
            evaluate("-m1 * 100", &m, &ids),
            Ok(Value::Series(Series::from([(0, -100.0), (60, -300.0)])))
        );
        assert_eq!(
            references("SUM(METRICS()) + m1", &ids),
            Ok(vec!["m1".into(), "m2".into(), "m1".into()])
        );
    }

    #[test]
    fn bad_expressions_say_why() {
        let (m, ids) = env();
        assert!(evaluate("m1 +", &m, &ids)
            .expect_err("fails")
            .contains("end"));
        assert!(evaluate("m9", &m, &ids).expect_err("fails").contains("m9"));
        assert!(evaluate("FOO(m1)", &m, &ids)
            .expect_err("fails")
            .contains("FOO"));
        assert!(evaluate("m1 $ 2", &m, &ids).is_err());
    }
}
