//! Each route's traffic, read from the gateway's own request metrics (the series
//! `/metrics` exposes: `http_requests_total`, `http_request_duration_seconds`), for the
//! admin status: rates, error shares and p99 between two readings, not counted a second
//! time.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use borough_telemetry::metrics::HttpMetrics;
use serde::Serialize;

/// The shortest window route rates are measured over (snapshots asked for sooner share
/// the last window).
const MIN_WINDOW: Duration = Duration::from_secs(1);

/// One route's traffic over the last window.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct RouteDto {
    pub method: String,
    /// The route's template (`/api/v1/users/{id}`).
    pub route: String,
    pub requests_per_second: f64,
    /// The share of answers that were 5xx (0 to 1).
    pub error_ratio: f64,
    /// The share of answers that were 4xx (0 to 1).
    pub client_error_ratio: f64,
    /// The 99th percentile latency, interpolated within its histogram bucket; `null`
    /// without requests in the window.
    pub p99_ms: Option<f64>,
    /// Requests since the gateway started.
    pub requests_total: u64,
}

/// Counts of one (method, route) since start.
#[derive(Debug, Clone, Default, PartialEq)]
struct Totals {
    requests: u64,
    server_errors: u64,
    client_errors: u64,
    /// Cumulative counts per upper bound (seconds), ascending; `+Inf` last.
    buckets: Vec<(f64, u64)>,
}

/// Reads the request metrics into totals per (method, route), and keeps the last reading
/// to turn the next into rates.
pub struct RouteSampler {
    metrics: HttpMetrics,
    last: Mutex<Option<Sample>>,
}

#[derive(Clone)]
struct Sample {
    at: Instant,
    totals: BTreeMap<(String, String), Totals>,
    window: Duration,
    routes: Vec<RouteDto>,
}

impl RouteSampler {
    pub fn new(metrics: HttpMetrics) -> Self {
        RouteSampler {
            metrics,
            last: Mutex::new(None),
        }
    }

    /// Each route's traffic since the previous reading (at least [`MIN_WINDOW`] ago; a
    /// reading sooner gets the previous one's). The first reading has totals only: rates
    /// of zero until the second.
    pub fn routes(&self) -> (Duration, Vec<RouteDto>) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(sample) = last.as_ref()
            && sample.at.elapsed() < MIN_WINDOW
        {
            return (sample.window, sample.routes.clone());
        }
        let now = Instant::now();
        let totals = parse(&self.metrics.encode());
        let (window, routes) = match last.as_ref() {
            Some(previous) => {
                let window = now.duration_since(previous.at);
                (window, rates(&previous.totals, &totals, window))
            }
            None => (
                Duration::ZERO,
                rates(&BTreeMap::new(), &totals, Duration::ZERO),
            ),
        };
        *last = Some(Sample {
            at: now,
            totals,
            window,
            routes: routes.clone(),
        });
        (window, routes)
    }
}

/// The routes' rates between two readings `window` apart.
fn rates(
    before: &BTreeMap<(String, String), Totals>,
    now: &BTreeMap<(String, String), Totals>,
    window: Duration,
) -> Vec<RouteDto> {
    let empty = Totals::default();
    let mut routes: Vec<RouteDto> = now
        .iter()
        .map(|((method, route), totals)| {
            let previous = before
                .get(&(method.clone(), route.clone()))
                .unwrap_or(&empty);
            let requests = totals.requests.saturating_sub(previous.requests);
            let ratio = |now: u64, then: u64| match requests {
                0 => 0.0,
                n => now.saturating_sub(then) as f64 / n as f64,
            };
            RouteDto {
                method: method.clone(),
                route: route.clone(),
                requests_per_second: match window.as_secs_f64() {
                    s if s > 0.0 => requests as f64 / s,
                    _ => 0.0,
                },
                error_ratio: ratio(totals.server_errors, previous.server_errors),
                client_error_ratio: ratio(totals.client_errors, previous.client_errors),
                p99_ms: quantile(&totals.buckets, &previous.buckets, 0.99).map(|s| s * 1000.0),
                requests_total: totals.requests,
            }
        })
        .collect();
    routes.sort_by(|a, b| {
        b.requests_per_second
            .total_cmp(&a.requests_per_second)
            .then(b.requests_total.cmp(&a.requests_total))
    });
    routes
}

/// The `q` quantile (seconds) of the observations between two cumulative histograms,
/// interpolated linearly within the bucket it falls in; `None` without observations.
fn quantile(now: &[(f64, u64)], before: &[(f64, u64)], q: f64) -> Option<f64> {
    let count_before = |le: f64| before.iter().find(|(b, _)| *b == le).map_or(0, |(_, c)| *c);
    let deltas: Vec<(f64, u64)> = now
        .iter()
        .map(|(le, c)| (*le, c.saturating_sub(count_before(*le))))
        .collect();
    let total = deltas.last().map(|(_, c)| *c)?;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut lower = (0.0, 0_u64);
    for (le, cumulative) in deltas {
        if cumulative as f64 >= rank {
            if le.is_infinite() {
                return Some(lower.0); // Beyond the last bound: the last bound.
            }
            let in_bucket = (cumulative - lower.1) as f64;
            let into = if in_bucket > 0.0 {
                (rank - lower.1 as f64) / in_bucket
            } else {
                1.0
            };
            return Some(lower.0 + (le - lower.0) * into.clamp(0.0, 1.0));
        }
        lower = (le, cumulative);
    }
    Some(lower.0)
}

/// Totals per (method, route) from the text exposition of the request metrics
/// (`http_requests_total` and `http_request_duration_seconds_bucket`, any prefix).
fn parse(text: &str) -> BTreeMap<(String, String), Totals> {
    let mut totals: BTreeMap<(String, String), Totals> = BTreeMap::new();
    for line in text.lines() {
        let Some((name, labels, value)) = sample_line(line) else {
            continue;
        };
        let label = |key: &str| {
            labels
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        let (Some(method), Some(route)) = (label("method"), label("route")) else {
            continue;
        };
        let entry = totals
            .entry((method.to_owned(), route.to_owned()))
            .or_default();
        if name.ends_with("http_requests_total") {
            let count = value as u64;
            entry.requests += count;
            match label("status").and_then(|s| s.parse::<u16>().ok()) {
                Some(500..=599) => entry.server_errors += count,
                Some(400..=499) => entry.client_errors += count,
                _ => {}
            }
        } else if name.ends_with("http_request_duration_seconds_bucket") {
            let Some(le) = label("le").and_then(|le| match le {
                "+Inf" => Some(f64::INFINITY),
                le => le.parse::<f64>().ok(),
            }) else {
                continue;
            };
            match entry.buckets.iter_mut().find(|(b, _)| *b == le) {
                Some((_, c)) => *c += value as u64,
                None => entry.buckets.push((le, value as u64)),
            }
        }
    }
    for entry in totals.values_mut() {
        entry.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    totals
}

/// A sample's labels, in order.
type Labels = Vec<(String, String)>;

/// `name{k="v",...} value` (labels optional; escapes `\"`, `\\`, `\n` in values).
fn sample_line(line: &str) -> Option<(&str, Labels, f64)> {
    if line.starts_with('#') || line.trim().is_empty() {
        return None;
    }
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let mut labels = Vec::new();
    let mut rest = &line[name_end..];
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices().peekable();
        let end;
        loop {
            // key
            let start = chars.peek()?.0;
            let mut key_end = start;
            for (i, c) in chars.by_ref() {
                if c == '=' {
                    key_end = i;
                    break;
                }
            }
            let key = after[start..key_end].trim_start_matches(',').to_owned();
            if chars.next()?.1 != '"' {
                return None;
            }
            let mut value = String::new();
            loop {
                let (_, c) = chars.next()?;
                match c {
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    '"' => break,
                    c => value.push(c),
                }
            }
            labels.push((key, value));
            match chars.next()? {
                (_, ',') => {
                    if let Some(&(i, '}')) = chars.peek() {
                        end = i;
                        break;
                    }
                }
                (i, '}') => {
                    end = i;
                    break;
                }
                _ => return None,
            }
        }
        rest = &after[end + 1..];
    }
    let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
    Some((name, labels, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP borough_http_requests Total HTTP requests
# TYPE borough_http_requests counter
borough_http_requests_total{service="gateway",method="GET",route="/api/v1/users/{id}",status="200"} 90
borough_http_requests_total{service="gateway",method="GET",route="/api/v1/users/{id}",status="503"} 10
borough_http_requests_total{service="gateway",method="POST",route="/a \"quoted\" route",status="404"} 4
borough_http_request_duration_seconds_bucket{service="gateway",method="GET",route="/api/v1/users/{id}",status="200",le="0.001"} 50
borough_http_request_duration_seconds_bucket{service="gateway",method="GET",route="/api/v1/users/{id}",status="200",le="0.002"} 90
borough_http_request_duration_seconds_bucket{service="gateway",method="GET",route="/api/v1/users/{id}",status="200",le="+Inf"} 90
borough_http_request_duration_seconds_bucket{service="gateway",method="GET",route="/api/v1/users/{id}",status="503",le="0.001"} 0
borough_http_request_duration_seconds_bucket{service="gateway",method="GET",route="/api/v1/users/{id}",status="503",le="0.002"} 0
borough_http_request_duration_seconds_bucket{service="gateway",method="GET",route="/api/v1/users/{id}",status="503",le="+Inf"} 10
"#;

    #[test]
    fn the_exposition_is_read_into_totals_per_route_with_quoted_labels() {
        let totals = parse(TEXT);
        let users = &totals[&("GET".to_owned(), "/api/v1/users/{id}".to_owned())];
        assert_eq!(users.requests, 100);
        assert_eq!(users.server_errors, 10);
        assert_eq!(users.client_errors, 0);
        assert_eq!(
            users.buckets,
            vec![(0.001, 50), (0.002, 90), (f64::INFINITY, 100)]
        );
        let quoted = &totals[&("POST".to_owned(), "/a \"quoted\" route".to_owned())];
        assert_eq!(quoted.client_errors, 4);
    }

    #[test]
    fn rates_are_the_difference_between_two_readings_over_the_window() {
        let before = parse(TEXT);
        let now = parse(&TEXT.replace("} 90\n", "} 190\n"));
        let routes = rates(&before, &now, Duration::from_secs(2));
        let users = routes
            .iter()
            .find(|r| r.route == "/api/v1/users/{id}")
            .cloned();
        let Some(users) = users else {
            panic!("no route in {routes:?}");
        };
        // 100 more requests, all 200 within 2 ms (the bucket of 1-2 ms: p99 near 2 ms).
        assert_eq!(users.requests_per_second, 50.0);
        assert_eq!(users.error_ratio, 0.0);
        let p99 = users.p99_ms.unwrap_or_default();
        assert!(p99 > 1.0 && p99 <= 2.0, "{p99}");
        assert_eq!(users.requests_total, 200);
        // No traffic in the window: no p99, a rate of zero.
        let idle = rates(&now, &now, Duration::from_secs(2));
        assert!(
            idle.iter()
                .all(|r| r.requests_per_second == 0.0 && r.p99_ms.is_none())
        );
    }

    #[test]
    fn the_quantile_falls_in_its_bucket_and_never_past_the_last_bound() {
        let now = [(0.001, 50), (0.002, 100), (f64::INFINITY, 100)];
        assert_eq!(quantile(&now, &[], 0.5), Some(0.001));
        let q = quantile(&now, &[], 0.99).unwrap_or_default();
        assert!((q - 0.00198).abs() < 1e-9, "{q}");
        let slow = [(0.001, 0), (0.002, 0), (f64::INFINITY, 10)];
        assert_eq!(quantile(&slow, &[], 0.99), Some(0.002));
        assert_eq!(quantile(&now, &now, 0.99), None);
    }
}
