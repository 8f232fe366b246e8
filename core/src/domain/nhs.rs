//! NHS numbers: ten digits whose last is a Modulus 11 check digit.

/// Returns true when `s` is ten ASCII digits with a valid Modulus 11 check digit.
/// A computed check digit of 10 means the number is invalid; 11 means 0.
pub fn is_valid(s: &str) -> bool {
    let bytes = s.as_bytes();
    if bytes.len() != 10 || !bytes.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let sum: u32 = bytes[..9]
        .iter()
        .zip((2..=10).rev())
        .map(|(b, weight)| u32::from(b - b'0') * weight)
        .sum();
    let check = match 11 - (sum % 11) {
        11 => 0,
        10 => return false,
        c => c,
    };
    u32::from(bytes[9] - b'0') == check
}

#[cfg(test)]
mod tests {
    use super::is_valid;

    #[test]
    fn modulus_11_table() {
        for (nhs, ok) in [
            ("9434765919", true),
            ("9912003888", true),
            ("9000000009", true),
            ("9464250569", true),
            ("1112223330", false),
            ("9434765918", false),
            ("943476591", false),
            ("94347659190", false),
            ("943476591a", false),
            ("", false),
            ("1234567881", true),
            // Check digit would be 10: invalid whatever the last digit.
            ("1000000010", false),
        ] {
            assert_eq!(is_valid(nhs), ok, "{nhs}");
        }
    }
}
