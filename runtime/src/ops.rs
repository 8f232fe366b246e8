//! Operations plumbing shared by every nems service in a process: one Prometheus registry
//! (so `nems up` serves core, edge and adapter metrics from one `/metrics`) and named
//! readiness checks (for `/readyz`). Metric names are part of the operator contract.

use std::sync::{Arc, Mutex, OnceLock};

use prometheus_client::registry::{Metric, Registry};

type Check = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

struct Ops {
    registry: Mutex<Registry>,
    checks: Mutex<Vec<(String, Check)>>,
}

fn ops() -> &'static Ops {
    static OPS: OnceLock<Ops> = OnceLock::new();
    OPS.get_or_init(|| {
        let mut registry = Registry::with_prefix("nems");
        registry.register_collector(Box::new(ProcessCollector));
        Ops {
            registry: Mutex::new(registry),
            checks: Mutex::new(Vec::new()),
        }
    })
}

/// `nems_build_info` and the `nems_process_*` metrics of this process (Linux `/proc`;
/// elsewhere only the build info).
#[derive(Debug)]
struct ProcessCollector;

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// What `/proc` says of this process: (CPU seconds, resident bytes, open fds, start time
/// in seconds since the epoch).
fn process_figures() -> Option<(f64, u64, u64, f64)> {
    // Linux's USER_HZ is 100 on every architecture nems builds for.
    const TICKS: f64 = 100.0;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces), from field 3 on.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let started: f64 = fields.get(19)?.parse().ok()?;
    let boot: f64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())?;
    let rss_kb: u64 = std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })?;
    let fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    Some((
        (utime + stime) / TICKS,
        rss_kb * 1024,
        fds,
        boot + started / TICKS,
    ))
}

impl prometheus_client::collector::Collector for ProcessCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        let one = ConstGauge::new(1i64);
        {
            let mut build = encoder.encode_descriptor(
                "build_info",
                "The nems build serving (always 1; the version in the label)",
                None,
                one.metric_type(),
            )?;
            one.encode(build.encode_family(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })?)?;
        }
        let Some((cpu, rss, fds, start)) = process_figures() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(cpu);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "User and system CPU time of this process",
            None,
            cpu.metric_type(),
        )?)?;
        let gauges: [(&str, &str, f64); 3] = [
            (
                "process_resident_memory_bytes",
                "Resident memory of this process",
                rss as f64,
            ),
            (
                "process_open_fds",
                "Open file descriptors of this process",
                fds as f64,
            ),
            (
                "process_start_time_seconds",
                "Start time of this process (seconds since the Unix epoch)",
                start,
            ),
        ];
        for (name, help, value) in gauges {
            let g = ConstGauge::new(value);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Registers a metric under `nems_<name>`. Call once per metric per process (services
/// keep their metric handles in a `OnceLock`).
pub fn register(name: &str, help: &str, metric: impl Metric) {
    lock(&ops().registry).register(name, help, metric);
}

/// Registers a collector evaluated at every scrape (values read from a store).
pub fn register_collector(collector: Box<dyn prometheus_client::collector::Collector>) {
    lock(&ops().registry).register_collector(collector);
}

/// The Prometheus text exposition of every registered metric.
pub fn encode() -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &lock(&ops().registry)).is_err() {
        out.clear();
    }
    out
}

/// Adds (or replaces, by name) a readiness check: `Err(reason)` means not ready.
pub fn set_check(name: &str, check: impl Fn() -> Result<(), String> + Send + Sync + 'static) {
    let mut checks = lock(&ops().checks);
    checks.retain(|(n, _)| n != name);
    checks.push((name.to_string(), Arc::new(check)));
}

/// Removes a readiness check (a service that stopped).
pub fn remove_check(name: &str) {
    lock(&ops().checks).retain(|(n, _)| n != name);
}

/// Runs every readiness check; the failures, by name.
pub fn readiness() -> Vec<(String, String)> {
    let checks: Vec<(String, Check)> = lock(&ops().checks).clone();
    checks
        .into_iter()
        .filter_map(|(name, check)| check().err().map(|why| (name, why)))
        .collect()
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;

    use super::*;

    #[test]
    fn metrics_and_checks() {
        let c: Counter = Counter::default();
        register(
            "ops_test_things",
            "Things counted by the ops test",
            c.clone(),
        );
        c.inc_by(3);
        assert!(
            encode().contains("nems_ops_test_things_total 3"),
            "{}",
            encode()
        );
        set_check("ops-test", || Err("warming up".into()));
        assert!(
            readiness()
                .iter()
                .any(|(n, w)| n == "ops-test" && w == "warming up")
        );
        set_check("ops-test", || Ok(()));
        assert!(!readiness().iter().any(|(n, _)| n == "ops-test"));
        remove_check("ops-test");
    }
}
