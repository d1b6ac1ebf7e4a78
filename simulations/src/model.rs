//! What a run simulates, parsed from the command line: durations, latency distributions, the partition spec and
//! the loss model. Every parser says what was wrong and what it expected.

use std::fmt;
use std::str::FromStr;

use rand::Rng;

/// Microseconds on the simulator's virtual clock.
pub type Micros = u64;

/// One millisecond in [`Micros`].
pub const MS: Micros = 1_000;
/// One second in [`Micros`].
pub const SEC: Micros = 1_000_000;

/// A bad command-line value: what was given and what was expected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct ParseError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError(msg.into()))
}

/// Parses a duration such as `20ms`, `1.5s`, `250us` or `2m` into microseconds.
pub fn parse_duration(s: &str) -> Result<Micros, ParseError> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let scale = match unit {
        "us" | "µs" => 1.0,
        "ms" => MS as f64,
        "s" => SEC as f64,
        "m" | "min" => 60.0 * SEC as f64,
        "" => return err(format!("duration `{s}` has no unit: write e.g. `20ms`, `1.5s`, `250us` or `2m`")),
        u => return err(format!("duration `{s}` has unknown unit `{u}`: use us, ms, s or m")),
    };
    match num.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok((v * scale).round() as Micros),
        _ => err(format!("duration `{s}` does not start with a non-negative number")),
    }
}

/// Formats microseconds for people: `850us`, `12.5ms`, `3.20s`.
pub fn fmt_micros(us: Micros) -> String {
    if us < MS {
        format!("{us}us")
    } else if us < SEC {
        format!("{:.1}ms", us as f64 / MS as f64)
    } else {
        format!("{:.2}s", us as f64 / SEC as f64)
    }
}

/// A one-way link latency distribution, sampled once per connection.
#[derive(Debug, Clone, PartialEq)]
pub enum Latency {
    /// Always the same: `const:20ms`.
    Const(Micros),
    /// Uniform between two values: `uniform:5ms..50ms`.
    Uniform(Micros, Micros),
    /// Normal with a mean and a standard deviation, cut at 0: `normal:20ms,5ms`.
    Normal(Micros, Micros),
    /// Log-normal with a median and a shape sigma (a long tail, as on the internet): `lognormal:20ms,0.5`.
    LogNormal(Micros, f64),
}

impl Default for Latency {
    fn default() -> Self {
        Latency::Const(20 * MS)
    }
}

const LATENCY_FORMS: &str = "const:20ms, uniform:5ms..50ms, normal:20ms,5ms or lognormal:20ms,0.5";

impl FromStr for Latency {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        let Some((kind, args)) = s.split_once(':') else {
            return err(format!("latency `{s}` has no distribution name: write one of {LATENCY_FORMS}"));
        };
        let bad = |why: &str| ParseError(format!("latency `{s}`: {why}; forms: {LATENCY_FORMS}"));
        let dur = |x: &str| parse_duration(x).map_err(|e| bad(&e.0));
        match kind {
            "const" => Ok(Latency::Const(dur(args)?)),
            "uniform" => {
                let (a, b) = args.split_once("..").ok_or_else(|| bad("uniform needs LOW..HIGH"))?;
                let (a, b) = (dur(a)?, dur(b)?);
                if a > b {
                    return Err(bad("uniform needs LOW <= HIGH"));
                }
                Ok(Latency::Uniform(a, b))
            }
            "normal" => {
                let (m, sd) = args.split_once(',').ok_or_else(|| bad("normal needs MEAN,STDDEV"))?;
                Ok(Latency::Normal(dur(m)?, dur(sd)?))
            }
            "lognormal" => {
                let (m, sigma) = args.split_once(',').ok_or_else(|| bad("lognormal needs MEDIAN,SIGMA"))?;
                let sigma: f64 = sigma.trim().parse().map_err(|_| bad("SIGMA must be a number such as 0.5"))?;
                if !(0.0..=5.0).contains(&sigma) {
                    return Err(bad("SIGMA must be between 0 and 5"));
                }
                Ok(Latency::LogNormal(dur(m)?, sigma))
            }
            other => Err(bad(&format!("unknown distribution `{other}`"))),
        }
    }
}

impl fmt::Display for Latency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = |us: &Micros| fmt_micros(*us);
        match self {
            Latency::Const(a) => write!(f, "const:{}", d(a)),
            Latency::Uniform(a, b) => write!(f, "uniform:{}..{}", d(a), d(b)),
            Latency::Normal(m, sd) => write!(f, "normal:{},{}", d(m), d(sd)),
            Latency::LogNormal(m, s) => write!(f, "lognormal:{},{s}", d(m)),
        }
    }
}

impl Latency {
    /// One sample, at least 1 µs.
    pub fn sample(&self, rng: &mut impl Rng) -> Micros {
        let v = match *self {
            Latency::Const(a) => a as f64,
            Latency::Uniform(a, b) => a as f64 + rng.gen::<f64>() * (b - a) as f64,
            Latency::Normal(m, sd) => m as f64 + sd as f64 * std_normal(rng),
            Latency::LogNormal(m, sigma) => m as f64 * (sigma * std_normal(rng)).exp(),
        };
        (v.round() as Micros).max(1)
    }
}

/// A standard normal sample (Box-Muller).
fn std_normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = 1.0 - rng.gen::<f64>();
    let u2: f64 = rng.gen::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// What packet loss does to a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LossModel {
    /// Reliable streams (libp2p over TCP or QUIC, as the node runs): each lost transmission costs one
    /// retransmission timeout (200 ms, doubling); after 8 losses in a row the message is lost.
    #[default]
    Retransmit,
    /// Datagram loss: a lost message is gone, and only gossip repair (IHAVE/IWANT) and anti-entropy recover it.
    Drop,
}

/// A partition: at `at` the nodes split into two groups (a fraction `split` in the first) that cannot reach each
/// other; at `heal` (if given) the split ends.
#[derive(Debug, Clone, PartialEq)]
pub struct Partition {
    /// When it starts.
    pub at: Micros,
    /// When it heals, if it does.
    pub heal: Option<Micros>,
    /// Fraction of the nodes in the first group.
    pub split: f64,
}

const PARTITION_FORM: &str = "at=10s,heal=40s,split=0.5 (heal and split optional; split defaults to 0.5)";

impl FromStr for Partition {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        let (mut at, mut heal, mut split) = (None, None, 0.5);
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((k, v)) = part.split_once('=') else {
                return err(format!("partition `{s}`: `{part}` is not KEY=VALUE; write {PARTITION_FORM}"));
            };
            let bad = |e: ParseError| ParseError(format!("partition `{s}`: {k}: {}", e.0));
            match k {
                "at" => at = Some(parse_duration(v).map_err(bad)?),
                "heal" => heal = Some(parse_duration(v).map_err(bad)?),
                "split" => {
                    split = match v.parse::<f64>() {
                        Ok(x) if x > 0.0 && x < 1.0 => x,
                        _ => {
                            return err(format!("partition `{s}`: split must be a fraction between 0 and 1, not `{v}`"))
                        }
                    }
                }
                _ => return err(format!("partition `{s}`: unknown key `{k}`; write {PARTITION_FORM}")),
            }
        }
        let Some(at) = at else {
            return err(format!("partition `{s}` needs at=TIME; write {PARTITION_FORM}"));
        };
        if heal.is_some_and(|h| h <= at) {
            return err(format!("partition `{s}`: heal must come after at"));
        }
        Ok(Partition { at, heal, split })
    }
}

/// Crashes scheduled on the command line: `COUNT@TIME`, e.g. `1@10s`: COUNT random nodes crash at TIME for good.
#[derive(Debug, Clone, PartialEq)]
pub struct Crash {
    /// How many nodes.
    pub count: usize,
    /// When.
    pub at: Micros,
}

impl FromStr for Crash {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        let Some((n, t)) = s.split_once('@') else {
            return err(format!("crash `{s}`: write COUNT@TIME, e.g. 1@10s"));
        };
        let count = n.trim().parse().map_err(|_| ParseError(format!("crash `{s}`: COUNT `{n}` is not a number")))?;
        let at = parse_duration(t).map_err(|e| ParseError(format!("crash `{s}`: {}", e.0)))?;
        Ok(Crash { count, at })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("20ms"), Ok(20_000));
        assert_eq!(parse_duration("1.5s"), Ok(1_500_000));
        assert_eq!(parse_duration("250us"), Ok(250));
        assert_eq!(parse_duration("2m"), Ok(120_000_000));
        assert!(parse_duration("20").unwrap_err().0.contains("no unit"));
        assert!(parse_duration("20h").unwrap_err().0.contains("unknown unit"));
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn latencies_parse_and_sample_in_range() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        assert_eq!("const:20ms".parse(), Ok(Latency::Const(20_000)));
        let u: Latency = "uniform:5ms..50ms".parse().unwrap();
        for _ in 0..1000 {
            let x = u.sample(&mut rng);
            assert!((5_000..=50_000).contains(&x));
        }
        let n: Latency = "normal:20ms,5ms".parse().unwrap();
        let mean = (0..10_000).map(|_| n.sample(&mut rng) as f64).sum::<f64>() / 10_000.0;
        assert!((mean - 20_000.0).abs() < 500.0, "{mean}");
        assert!("lognormal:20ms,0.5".parse::<Latency>().is_ok());
        assert!("gauss:1ms".parse::<Latency>().unwrap_err().0.contains("unknown distribution"));
        assert!("uniform:5ms".parse::<Latency>().unwrap_err().0.contains("LOW..HIGH"));
        assert!("20ms".parse::<Latency>().unwrap_err().0.contains("no distribution"));
        assert_eq!(u.to_string(), "uniform:5.0ms..50.0ms");
    }

    #[test]
    fn partitions() {
        let p: Partition = "at=10s,heal=40s,split=0.3".parse().unwrap();
        assert_eq!(p, Partition { at: 10 * SEC, heal: Some(40 * SEC), split: 0.3 });
        assert!("heal=4s".parse::<Partition>().unwrap_err().0.contains("needs at="));
        assert!("at=5s,heal=4s".parse::<Partition>().unwrap_err().0.contains("after"));
        assert!("at=5s,split=2".parse::<Partition>().unwrap_err().0.contains("fraction"));
        assert!("at=5s,foo=1".parse::<Partition>().unwrap_err().0.contains("unknown key"));
        assert_eq!("2@10s".parse(), Ok(Crash { count: 2, at: 10 * SEC }));
    }
}
