//! NHS numbers: ten digits whose last is a Modulus 11 check digit.

pub use nems_proto::ids::nhs_number_is_valid as is_valid;

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

#[cfg(test)]
mod more_tests {
    use super::is_valid as nhs_number_is_valid;

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
