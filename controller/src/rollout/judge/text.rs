//! Numbers as people read them in evidence sentences.

/// `1,234,567`.
pub(crate) fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// An e-value for people: `0.3`, `12`, `1,240`, `3.1e9`.
pub(crate) fn evidence_value(log_e: f64) -> String {
    let e = log_e.exp();
    if e < 10.0 {
        format!("{e:.1}")
    } else if e < 1e6 {
        group(e.round() as u64)
    } else {
        let exponent = (log_e / 10f64.ln()).floor();
        let mantissa = (log_e - exponent * 10f64.ln()).exp();
        format!("{mantissa:.1}e{exponent}")
    }
}

/// `0.01`, `0.5`, `20` (no trailing zeros).
pub(crate) fn trim_float(v: f64) -> String {
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_owned()
}

/// A percentage with enough digits to tell 99.9% from 100%.
pub(crate) fn percent(v: Option<f64>) -> String {
    match v {
        None => "n/a".to_owned(),
        Some(v) if (99.0..100.0).contains(&v) => {
            format!("{}%", trim_float((v * 100.0).floor() / 100.0))
        }
        Some(v) => format!("{}%", trim_float((v * 10.0).round() / 10.0)),
    }
}

/// Seconds as milliseconds for people.
pub(crate) fn millis(seconds: Option<f64>) -> String {
    match seconds {
        None => "n/a".to_owned(),
        Some(s) => {
            let ms = s * 1000.0;
            if ms < 10.0 {
                format!("{ms:.2} ms")
            } else if ms < 100.0 {
                format!("{ms:.1} ms")
            } else {
                format!("{} ms", group(ms.round() as u64))
            }
        }
    }
}

pub(crate) fn rate(v: Option<f64>) -> String {
    v.map_or_else(
        || "n/a".to_owned(),
        |r| format!("{} req/s", trim_float((r * 100.0).round() / 100.0)),
    )
}

/// `p99`, `p99.9`, `p50`.
pub(crate) fn quantile_label(q: f64) -> String {
    format!("p{}", trim_float(q * 100.0))
}
