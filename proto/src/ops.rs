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
    OPS.get_or_init(|| Ops {
        registry: Mutex::new(Registry::with_prefix("nems")),
        checks: Mutex::new(Vec::new()),
    })
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
