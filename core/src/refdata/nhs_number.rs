//! NHS number check: ten digits whose last is the Modulus 11 check digit of the first nine.

/// Returns true when `value` is exactly ten ASCII digits and the tenth is the Modulus 11
/// check digit of the first nine.
///
/// The check: multiply the first nine digits by 10, 9, …, 2 and add; the check digit is
/// `11 - (sum mod 11)`, where 11 becomes 0 and 10 means no valid number has those nine
/// digits. Spaces and other separators are not accepted: callers strip display formatting
/// (`943 476 5919`) first.
pub fn nhs_number_is_valid(value: &str) -> bool {
    let bytes = value.as_bytes();
    if bytes.len() != 10 || !bytes.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let sum: u32 = bytes[..9]
        .iter()
        .zip((2..=10u32).rev())
        .map(|(digit, weight)| u32::from(digit - b'0') * weight)
        .sum();
    let check = match 11 - sum % 11 {
        11 => 0,
        10 => return false,
        other => other,
    };
    check == u32::from(bytes[9] - b'0')
}

#[cfg(test)]
mod tests {
    use super::nhs_number_is_valid;

    #[test]
    fn valid_numbers_pass() {
        for number in [
            "9434765919", // the NEMS specification's example
            "9000000009", // PDS sandbox patients
            "9000000025",
            "9000000017",
            "9000000033",
            "9990000018", // synthetic test range used by our fixtures
            "9990000026",
            "9990000107",
            "0000000000", // remainder 0 gives check digit 0
        ] {
            assert!(nhs_number_is_valid(number), "{number} should be valid");
        }
    }

    #[test]
    fn invalid_numbers_fail() {
        for number in [
            "",
            "9434765918",  // wrong check digit
            "9434765910",  // wrong check digit
            "9990000000",  // first nine give check value 10: no valid number exists
            "9990000001",  // same nine digits
            "943476591",   // nine digits
            "94347659190", // eleven digits
            "943 476 5919",
            "943476591a",
            " 9434765919",
            "９４３４７６５９１９", // full-width digits are not ASCII
        ] {
            assert!(!nhs_number_is_valid(number), "{number:?} should be invalid");
        }
    }
}
