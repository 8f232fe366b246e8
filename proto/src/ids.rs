//! Identifier rules that both sides of the gRPC hop apply.

/// Returns true when `s` is ten ASCII digits whose last is the Modulus 11 check digit of
/// the first nine (weights 10 down to 2; a remainder giving 11 means 0, giving 10 means no
/// valid NHS number has those nine digits). Separators are not accepted.
pub fn nhs_number_is_valid(s: &str) -> bool {
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
