//! Property tests of the parsers that take outside input: C-printf file templates (a PV or
//! a flag), value references and reference patterns (a flag, a `--refs` file). Each runs a
//! bounded number of cases (a few seconds in all).

use detflow_writer::naming::MAX_FULL_NAME;
use detflow_writer::{FileTemplate, RefPattern, TemplateError, ValueRef};
use proptest::prelude::*;

const CASES: u32 = 512;

/// Text made of the pieces a template parser has to get right, and some noise.
fn template_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        proptest::sample::select(vec![
            "%", "%%", "s", "d", "i", "u", "x", "X", "o", "n", "p", "c", "f", "*", "l", "h", ".",
            "0", "4", "-", "+", " ", "#", "9999", "4097", "/", "_", ".h5", "é", "€",
        ])
        .prop_map(str::to_owned),
        "\\PC{0,3}",
    ];
    proptest::collection::vec(piece, 0..12).prop_map(|v| v.concat())
}

/// A conversion with flags, width and precision, e.g. `%-08.3`, without its letter.
fn conversion_prefix() -> impl Strategy<Value = String> {
    (
        proptest::sample::subsequence(vec!["-", "+", " ", "#", "0"], 0..3),
        proptest::option::of(0usize..40),
        proptest::option::of(0usize..40),
    )
        .prop_map(|(flags, width, precision)| {
            let mut s = format!("%{}", flags.concat());
            if let Some(w) = width {
                s.push_str(&w.to_string());
            }
            if let Some(p) = precision {
                s.push_str(&format!(".{p}"));
            }
            s
        })
}

/// A literal as a template writes it ('%' escaped).
fn literal() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_./%é-]{0,6}".prop_map(|s| s.replace('%', "%%"))
}

/// The pieces of a valid template: literal, %s (path), literal, %s (name), literal, an
/// integer conversion (number), literal.
fn valid_pieces() -> impl Strategy<Value = Vec<String>> {
    (
        proptest::collection::vec(literal(), 4),
        conversion_prefix(),
        conversion_prefix(),
        conversion_prefix(),
        proptest::sample::select(vec!["d", "i", "u", "x", "X", "o", "ld", "hd", "lld"]),
    )
        .prop_map(|(lit, p1, p2, p3, conv)| {
            // Flags C leaves undefined for %s are dropped there.
            let s_only = |s: &str| s.replace(['0', '#', '+', ' '], "");
            let s_only = |s: &str| format!("%{}s", s_only(&s[1..]));
            vec![
                lit[0].clone(),
                s_only(&p1),
                lit[1].clone(),
                s_only(&p2),
                lit[2].clone(),
                format!("{p3}{conv}"),
                lit[3].clone(),
            ]
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// Any text is parsed or refused, never a panic; what parses formats any arguments
    /// within NDPluginFile's buffer, and reads back as the same template.
    #[test]
    fn templates_parse_or_refuse_and_format_within_bounds(
        text in template_text(),
        path in "\\PC{0,40}",
        name in "\\PC{0,40}",
        number in any::<i32>(),
    ) {
        if let Ok(t) = text.parse::<FileTemplate>() {
            prop_assert_eq!(t.as_str(), text.as_str());
            prop_assert_eq!(t.to_string().parse::<FileTemplate>(), Ok(t.clone()));
            let name = t.format(&path, &name, number);
            prop_assert!(name.len() <= MAX_FULL_NAME);
        }
    }

    /// A valid template parses, round-trips through its text, and its file number can be
    /// read back from the name it builds.
    #[test]
    fn valid_templates_round_trip(
        pieces in valid_pieces(),
        path in "[a-z/]{0,12}",
        name in "[a-zA-Z_]{0,12}",
        number in 0i32..=i32::MAX,
    ) {
        let text = pieces.concat();
        let t: FileTemplate = text.parse().map_err(|e| TestCaseError::fail(format!("{e}")))?;
        prop_assert_eq!(t.to_string().parse::<FileTemplate>(), Ok(t.clone()));
        // With plain %s conversions the name is prefix + number + suffix: strip both and
        // parse the number in its radix.
        let mut pieces = pieces;
        pieces[1] = "%s".into();
        pieces[3] = "%s".into();
        let text = pieces.concat();
        let t: FileTemplate = text.parse().map_err(|e| TestCaseError::fail(format!("{e}")))?;
        let unescape = |s: &str| s.replace("%%", "%");
        let built = t.format(&path, &name, number);
        prop_assume!(built.len() < MAX_FULL_NAME);
        let prefix = format!(
            "{}{path}{}{name}{}",
            unescape(&pieces[0]),
            unescape(&pieces[2]),
            unescape(&pieces[4])
        );
        let suffix = unescape(&pieces[6]);
        let middle = built
            .strip_prefix(&prefix)
            .and_then(|m| m.strip_suffix(&suffix))
            .ok_or_else(|| TestCaseError::fail(format!("{built:?} from {text:?}")))?;
        let radix = match pieces[5].chars().last() {
            Some('x' | 'X') => 16,
            Some('o') => 8,
            _ => 10,
        };
        let digits = middle.trim().trim_start_matches('+').trim_start_matches("0x")
            .trim_start_matches("0X");
        let digits = if digits.is_empty() { "0" } else { digits };
        prop_assert_eq!(
            i64::from_str_radix(digits, radix).ok(),
            Some(i64::from(number)),
            "{:?} built {:?}",
            text,
            built
        );
    }

    /// Conversions that read memory or write through a pointer (`%n`, `%p`), or take
    /// arguments NDPluginFile does not pass (`%f`, `%c`, `%*d`, `%ls`), are refused
    /// wherever they stand, naming the conversion.
    #[test]
    fn dangerous_conversions_are_refused_wherever_they_stand(
        pieces in valid_pieces(),
        at in 0usize..8,
        prefix in conversion_prefix(),
        conv in proptest::sample::select(vec![
            "n", "hn", "hhn", "ln", "lln", "p", "c", "f", "e", "g", "a", "*d", "ls", "lls", "q",
        ]),
    ) {
        let bad = format!("{prefix}{conv}");
        let mut pieces = pieces;
        pieces.insert(at.min(pieces.len()), bad.clone());
        let text = pieces.concat();
        match text.parse::<FileTemplate>() {
            Err(e @ TemplateError::UnknownConversion { .. }) => {
                let TemplateError::UnknownConversion { conversion, .. } = &e else {
                    unreachable!()
                };
                // `%*d` stops at the '*'.
                prop_assert!(bad.starts_with(conversion.as_str()), "{} for {}", conversion, bad);
                prop_assert!(e.to_string().contains(conversion.as_str()));
            }
            other => prop_assert!(false, "{text:?} gave {other:?}"),
        }
    }
}

/// Text made of the pieces of references and patterns.
fn reference_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => proptest::sample::select(vec![
            "h5file://", "h5file:", "file://", "HDF5:", "//", "/", "localhost", "host", "d",
            "a.h5", "::", ":", "/entry", "[", "]", "0", "7", "1:3", "3:1", "%", "%2", "%41",
            "%zz", "%00", " ", "+", "{index}", "{index:04d}", "{index:3}", "{index:0}",
            "{index:65}", "{index:x}", "{name}", "{{", "}}", "{", "}", "é", "?", "#",
        ])
        .prop_map(str::to_owned),
        1 => "\\PC{0,4}",
    ];
    proptest::collection::vec(piece, 0..10).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// Any reference text is parsed or refused, never a panic; what parses has one
    /// canonical form that parses back to the same reference.
    #[test]
    fn references_parse_or_refuse_and_canonical_forms_round_trip(text in reference_text()) {
        if let Ok(r) = text.parse::<ValueRef>() {
            prop_assert!(r.path().is_absolute(), "{:?} gave {:?}", text, r);
            let canonical = r.to_string();
            prop_assert_eq!(canonical.parse::<ValueRef>(), Ok(r.clone()));
            prop_assert_eq!(canonical.parse::<ValueRef>().unwrap().to_string(), canonical);
        } else if let Err(e) = text.parse::<ValueRef>() {
            prop_assert!(e.to_string().contains(&format!("{text:?}")), "{}", e);
        }
    }

    /// A pattern that parses makes a reference for every index (its `value_ref` documents
    /// that it never panics), always with the same dataset and selection, and different
    /// indices name different files when it has `{index}`.
    #[test]
    fn patterns_that_parse_make_a_reference_for_every_index(
        text in reference_text(),
        i in any::<u64>(),
        j in any::<u64>(),
    ) {
        match text.parse::<RefPattern>() {
            Ok(p) => {
                prop_assert_eq!(p.to_string(), text.clone());
                let (zero, ri, rj) = (p.value_ref(0), p.value_ref(i), p.value_ref(j));
                prop_assert_eq!(ri.dataset(), zero.dataset());
                prop_assert_eq!(ri.selection(), zero.selection());
                if p.has_index() && i != j {
                    prop_assert_ne!(ri.path(), rj.path(), "{}", text);
                } else if !p.has_index() {
                    prop_assert_eq!(ri.path(), rj.path());
                }
            }
            Err(e) => {
                prop_assert_eq!(e.what, "ref-pattern");
                prop_assert!(e.to_string().contains(&format!("{text:?}")), "{}", e);
            }
        }
    }
}
