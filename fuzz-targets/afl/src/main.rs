//! `nems-afl <target>`: the AFL++ harness of one `nems_fuzz` target (scripts/fuzz.sh).

fn main() {
    let name = std::env::args().nth(1).unwrap_or_default();
    let Some(&(_, target)) = nems_fuzz::TARGETS.iter().find(|(n, _)| *n == name) else {
        let names: Vec<&str> = nems_fuzz::TARGETS.iter().map(|(n, _)| *n).collect();
        eprintln!("usage: nems-afl <{}>", names.join("|"));
        std::process::exit(2);
    };
    afl::fuzz!(|data: &[u8]| target(data));
}
