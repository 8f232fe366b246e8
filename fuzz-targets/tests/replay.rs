//! Replays every input of `corpus/<target>/` through its target: what the fuzzer found is
//! re-checked by every test run, in seconds.

use std::path::Path;
use std::time::Instant;

fn replay(name: &str) {
    let (_, target) = nems_fuzz::TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .expect("a known target");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(name);
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a corpus entry").path())
        .filter(|path| path.is_file())
        .collect();
    entries.sort();
    assert!(!entries.is_empty(), "{name}: the corpus is empty");
    for path in &entries {
        let data = std::fs::read(path).expect("a corpus file");
        let started = Instant::now();
        target(&data);
        // No input may come near AFL's timeout, even in a debug build.
        let took = started.elapsed();
        assert!(took.as_secs() < 2, "{}: took {took:?}", path.display());
    }
}

macro_rules! replay_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                replay(stringify!($name));
            }
        )*

        #[test]
        fn every_target_is_replayed() {
            let tested = [$(stringify!($name)),*];
            for (name, _) in nems_fuzz::TARGETS {
                assert!(tested.contains(&name), "{name} has no replay test");
            }
        }
    };
}

replay_tests!(
    bundle,
    subscription_xml,
    subscription_json,
    criteria,
    jwt,
    headers,
    mesh
);
