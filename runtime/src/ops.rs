//! Operations plumbing shared by every nems service in a process: one Prometheus registry
//! (so `nems up` serves core, edge and adapter metrics from one `/metrics`) and named
//! readiness checks (for `/readyz`). Metric names are part of the operator contract.
//!
//! A running service's scrape-time figures (read from its store at each scrape) come from
//! a *source* it attaches under a name for as long as it runs ([`attach_source`]): the
//! registry holds no service state of its own, and a service that stops takes its source
//! and its readiness check with it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::registry::{Metric, Registry};

type Check = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// What a named source slot holds: the attachment that filled it and its collector.
type Held = Option<(u64, Box<dyn Collector>)>;

struct Ops {
    registry: Mutex<Registry>,
    /// Readiness checks by name, each with the attachment that set it (0: [`set_check`]).
    checks: Mutex<Vec<(String, u64, Check)>>,
    /// Named source slots, each registered in `registry` once (a slot outlives the
    /// service that fills it, empty once it has stopped).
    sources: Mutex<Vec<(String, Arc<Mutex<Held>>)>>,
}

fn ops() -> &'static Ops {
    static OPS: OnceLock<Ops> = OnceLock::new();
    OPS.get_or_init(|| {
        let mut registry = Registry::with_prefix("nems");
        registry.register_collector(Box::new(ProcessCollector));
        Ops {
            registry: Mutex::new(registry),
            checks: Mutex::new(Vec::new()),
            sources: Mutex::new(Vec::new()),
        }
    })
}

/// A source slot as the registry sees it: encodes whatever fills it at scrape time.
#[derive(Debug)]
struct Slot(Arc<Mutex<Held>>);

impl Collector for Slot {
    fn encode(
        &self,
        encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        match &*lock(&self.0) {
            Some((_, source)) => source.encode(encoder),
            None => Ok(()),
        }
    }
}

/// A running service's hold on its source and readiness check, both named `name`:
/// dropping it removes the source and leaves the check reporting "stopped", unless
/// another service has attached under the same name since (the later one then keeps its
/// own).
#[derive(Debug)]
pub struct Attached {
    name: String,
    id: u64,
    slot: Arc<Mutex<Held>>,
}

/// Attaches `source` (read at every scrape) and `check` (run at every readiness probe)
/// under `name` until the returned [`Attached`] is dropped. A later attachment under the
/// same name replaces this one.
pub fn attach_source(
    name: &str,
    source: Box<dyn Collector>,
    check: impl Fn() -> Result<(), String> + Send + Sync + 'static,
) -> Attached {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    let slot = {
        let mut sources = lock(&ops().sources);
        match sources.iter().find(|(n, _)| n == name) {
            Some((_, slot)) => slot.clone(),
            None => {
                let slot = Arc::new(Mutex::new(None));
                lock(&ops().registry).register_collector(Box::new(Slot(slot.clone())));
                sources.push((name.to_string(), slot.clone()));
                slot
            }
        }
    };
    *lock(&slot) = Some((id, source));
    let mut checks = lock(&ops().checks);
    checks.retain(|(n, _, _)| n != name);
    checks.push((name.to_string(), id, Arc::new(check)));
    Attached {
        name: name.to_string(),
        id,
        slot,
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        {
            let mut held = lock(&self.slot);
            if matches!(&*held, Some((id, _)) if *id == self.id) {
                *held = None;
            }
        }
        // A stopped service is not ready (the process is going down, or it failed).
        let mut checks = lock(&ops().checks);
        for (n, id, check) in checks.iter_mut() {
            if *n == self.name && *id == self.id {
                *check = Arc::new(|| Err("stopped".into()));
            }
        }
    }
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
    checks.retain(|(n, _, _)| n != name);
    checks.push((name.to_string(), 0, Arc::new(check)));
}

/// Removes a readiness check (a service that stopped).
pub fn remove_check(name: &str) {
    lock(&ops().checks).retain(|(n, _, _)| n != name);
}

/// Runs every readiness check; the failures, by name.
pub fn readiness() -> Vec<(String, String)> {
    let checks: Vec<(String, u64, Check)> = lock(&ops().checks).clone();
    checks
        .into_iter()
        .filter_map(|(name, _, check)| check().err().map(|why| (name, why)))
        .collect()
}

/// The gRPC metadata key in which the operations console names the operator it
/// authenticated (by bearer token) when it calls core's operator API. Core records it in
/// the audit trail beside the client certificate it verified, and only then: without a
/// verified certificate the name is ignored.
pub const CONSOLE_USER_METADATA: &str = "x-nems-console-user";

/// Whether `name` is a console user name: 1 to 64 of `A-Z a-z 0-9 . _ @ -`.
pub fn is_console_user_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b))
}

/// Every readiness check of this process by name, each with why it fails, if it does
/// (the operations console shows them all, passing or not).
pub fn checks() -> Vec<(String, Option<String>)> {
    let checks: Vec<(String, u64, Check)> = lock(&ops().checks).clone();
    checks
        .into_iter()
        .map(|(name, _, check)| (name, check().err()))
        .collect()
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;

    use super::*;

    #[test]
    fn console_user_names_are_plain() {
        assert!(is_console_user_name("alice"));
        assert!(is_console_user_name("a.b_c-d@nhs.net"));
        assert!(!is_console_user_name(""));
        assert!(!is_console_user_name(&"a".repeat(65)));
        assert!(!is_console_user_name("alice smith"));
        assert!(!is_console_user_name("<script>"));
    }

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
        assert!(checks().iter().any(|(n, w)| n == "ops-test" && w.is_none()));
        remove_check("ops-test");
        assert!(!checks().iter().any(|(n, _)| n == "ops-test"));
    }

    /// A source with one constant gauge, for the attachment test.
    #[derive(Debug)]
    struct Constant(i64);

    impl Collector for Constant {
        fn encode(
            &self,
            mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
        ) -> Result<(), std::fmt::Error> {
            use prometheus_client::encoding::EncodeMetric;
            let g = prometheus_client::metrics::gauge::ConstGauge::new(self.0);
            g.encode(encoder.encode_descriptor(
                "ops_test_source",
                "The attachment test's gauge",
                None,
                g.metric_type(),
            )?)
        }
    }

    #[test]
    fn a_stopped_service_takes_its_source_and_check_but_not_a_later_ones() {
        let first = attach_source("ops-source", Box::new(Constant(1)), || Err("first".into()));
        assert!(encode().contains("nems_ops_test_source 1"), "{}", encode());
        assert!(readiness().contains(&("ops-source".into(), "first".into())));
        // A second service under the same name replaces the first...
        let second = attach_source("ops-source", Box::new(Constant(2)), || Err("second".into()));
        assert!(encode().contains("nems_ops_test_source 2"), "{}", encode());
        assert_eq!(
            readiness()
                .iter()
                .filter(|(n, _)| n == "ops-source")
                .collect::<Vec<_>>(),
            [&("ops-source".to_string(), "second".to_string())]
        );
        // ...and the first one stopping leaves the second's in place.
        drop(first);
        assert!(encode().contains("nems_ops_test_source 2"), "{}", encode());
        assert!(readiness().contains(&("ops-source".into(), "second".into())));
        drop(second);
        assert!(!encode().contains("nems_ops_test_source"), "{}", encode());
        assert!(readiness().contains(&("ops-source".into(), "stopped".into())));
        remove_check("ops-source");
    }
}
