//! Shape detection: which official file (or our demographics CSV) a file is, from its first
//! line, and where the columns the readers need sit.
//!
//! Header files (NSPL, ONSPD, the code lookups, demographics) are recognised by their column
//! names, matched by pattern because ONS renames columns every release. Headerless files
//! (NHSPD, epraccur) are recognised by their column count and the shape of the first row.
//! Nothing from a data row is ever copied into a refusal: only header names, and only when the
//! line looks like a header.

use super::postcode::normalise_postcode;
use super::{FileKind, Refusal};

/// The UTF-8 byte-order mark some ONS downloads start with.
pub(crate) const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// Most bytes read for detection.
pub(crate) const HEAD_LIMIT: usize = 64 * 1024;

/// Lines looked at to recognise a headerless file, so that one malformed first row does not
/// get a whole file refused.
pub(crate) const DETECT_LINES: usize = 8;

/// What every detector accepts, for refusals of files of no known shape.
pub(crate) const EXPECTED_ANY: &str = "NHSPD (headerless, 43 or 49 columns, postcodes in columns 1-2), \
     NSPL or ONSPD (header with pcd/pcd7/pcds, doterm, laua/oslaua/ladNNcd, ctry/ctryNNcd, \
     sicbl/ccg/sicblNNcd), epraccur (headerless, 27 columns), a sub-ICB code lookup (header \
     SICBLnnCD,SICBLnnCDH,...) or the demographics CSV (header nhs_number,birth_date,postcode,\
     previous_postcode,gp_practice,flag,date_of_death,last_updated)";

/// The demographics CSV's columns, in the documented order.
pub(crate) const DEMOGRAPHICS_COLUMNS: [&str; 8] = [
    "nhs_number",
    "birth_date",
    "postcode",
    "previous_postcode",
    "gp_practice",
    "flag",
    "date_of_death",
    "last_updated",
];

/// Column positions (0-based) of an NSPL or ONSPD file.
#[derive(Debug, Clone)]
pub(crate) struct OnsColumns {
    /// Postcode columns present, best first (`pcds`, then the fixed widths).
    pub(crate) postcodes: Vec<usize>,
    pub(crate) doterm: usize,
    pub(crate) local_authority: usize,
    pub(crate) country: usize,
    pub(crate) sub_icb: usize,
}

/// Where the columns a reader needs sit, per file shape.
#[derive(Debug, Clone)]
pub(crate) enum Layout {
    Nhspd,
    Ons(OnsColumns),
    Epraccur,
    CodeMap {
        gss: usize,
        ods: usize,
    },
    /// Position of each of [`DEMOGRAPHICS_COLUMNS`] in the file.
    Demographics([usize; 8]),
}

/// The result of detection: the kind, the layout and the header (if the file has one).
#[derive(Debug, Clone)]
pub(crate) struct Detected {
    pub(crate) kind: FileKind,
    pub(crate) layout: Layout,
    /// Number of columns every row must have.
    pub(crate) columns: usize,
    /// Header names as written (trimmed); empty for headerless files.
    pub(crate) header: Vec<String>,
}

impl Detected {
    /// Names column `index` (0-based) for a bad-row reason: its header name, else its number.
    pub(crate) fn column_name(&self, index: usize) -> String {
        match self.header.get(index) {
            Some(name) => format!("column {name}"),
            None => format!("column {}", index + 1),
        }
    }
}

/// Detects the kind of file from its first bytes: at least the whole first line, ideally the
/// first 8 lines or 64 KiB (a headerless file is recognised when any of its first 8 lines has
/// the right shape). A UTF-8 BOM and leading blank lines are allowed.
///
/// Returns the kind, or a refusal naming the accepted formats and what was seen (column count,
/// and header names when the first line is a header; never values from a data row).
pub fn detect(head: &[u8]) -> Result<FileKind, Refusal> {
    detect_layout(head)
        .map(|detected| detected.kind)
        .map_err(|found| Refusal::new(EXPECTED_ANY, found))
}

/// Detects the layout from the first lines in `head`; the error describes what was found.
pub(crate) fn detect_layout(head: &[u8]) -> Result<Detected, String> {
    let head = head.strip_prefix(UTF8_BOM).unwrap_or(head);
    let Some(start) = head.iter().position(|b| !b.is_ascii_whitespace()) else {
        return Err("an empty file".to_owned());
    };
    let rest = &head[start..];
    match rest[0] {
        b'{' | b'[' => return Err("JSON, not CSV".to_owned()),
        b'<' => return Err("XML or HTML, not CSV".to_owned()),
        _ => {}
    }
    let mut segments: Vec<&[u8]> = rest.split(|&b| b == b'\n').collect();
    if segments.len() > 1 {
        // The text after the last newline may be a line cut short by the end of `head`.
        segments.pop();
    }
    let lines: Vec<&[u8]> = segments
        .into_iter()
        .filter(|line| !line.trim_ascii().is_empty())
        .take(DETECT_LINES)
        .collect();
    let line = lines.first().copied().unwrap_or(rest);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.contains(&0) {
        return Err("binary data, not CSV text".to_owned());
    }
    let Ok(text) = std::str::from_utf8(line) else {
        return Err("binary data or text that is not UTF-8".to_owned());
    };
    let fields = split_line(text);
    let lower: Vec<String> = fields.iter().map(|f| f.to_ascii_lowercase()).collect();
    let header = || fields.clone();

    if let Some(index) = demographics_index(&lower) {
        return Ok(Detected {
            kind: FileKind::Demographics,
            layout: Layout::Demographics(index),
            columns: fields.len(),
            header: header(),
        });
    }
    if let Some((gss, ods)) = code_map_columns(&lower) {
        return Ok(Detected {
            kind: FileKind::SubIcbCodeMap,
            layout: Layout::CodeMap { gss, ods },
            columns: fields.len(),
            header: header(),
        });
    }
    if let Some(found) = ons_columns(&lower) {
        let (kind, columns) = found.map_err(|missing| {
            format!(
                "{} without {missing}",
                describe(text, &fields).unwrap_or_else(|| "a header row".to_owned())
            )
        })?;
        return Ok(Detected {
            kind,
            layout: Layout::Ons(columns),
            columns: fields.len(),
            header: header(),
        });
    }
    if let Some(detected) = lines.iter().find_map(|line| headerless_shape(line)) {
        return Ok(detected);
    }
    Err(describe(text, &fields)
        .unwrap_or_else(|| format!("a headerless row of {} columns", fields.len())))
}

/// Recognises one line of a headerless file: NHSPD (43 or 49 columns, a postcode in column 1
/// or 2) or epraccur (27 columns, an ODS code in column 1).
fn headerless_shape(line: &[u8]) -> Option<Detected> {
    let text = std::str::from_utf8(line.strip_suffix(b"\r").unwrap_or(line)).ok()?;
    let fields = split_line(text);
    let is_postcode = |i: usize| {
        fields
            .get(i)
            .is_some_and(|f| normalise_postcode(f).is_some())
    };
    let (kind, layout) = match fields.len() {
        43 | 49 if is_postcode(0) || is_postcode(1) => (FileKind::Nhspd, Layout::Nhspd),
        27 if is_ods_code(&fields[0]) => (FileKind::Epraccur, Layout::Epraccur),
        _ => return None,
    };
    Some(Detected {
        kind,
        layout,
        columns: fields.len(),
        header: Vec::new(),
    })
}

/// Splits one CSV line into trimmed fields, honouring quotes.
fn split_line(text: &str) -> Vec<String> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    let mut record = csv::StringRecord::new();
    match reader.read_record(&mut record) {
        Ok(true) => record.iter().map(|f| f.trim().to_owned()).collect(),
        _ => Vec::new(),
    }
}

/// Describes a header line by its column count and first names, or `None` when the line does
/// not look like a header (so it may hold data that must not be echoed).
fn describe(text: &str, fields: &[String]) -> Option<String> {
    let looks_like_header =
        !text.trim_start().starts_with('"') && fields.iter().all(|f| is_header_name(f));
    if !looks_like_header {
        return None;
    }
    let shown: Vec<&str> = fields.iter().take(5).map(String::as_str).collect();
    let more = if fields.len() > 5 { ", ..." } else { "" };
    Some(format!(
        "a header row of {} columns: {}{more}",
        fields.len(),
        shown.join(", ")
    ))
}

/// Tells whether `name` looks like a column name rather than a value: a short identifier
/// (letters first, then letters, digits, `_`, `-` or `.`; no spaces) that is not a postcode.
fn is_header_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 40
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && normalise_postcode(name).is_none()
}

/// Tells whether `value` looks like an ODS organisation code (upper case, with a digit).
pub(crate) fn is_ods_code(value: &str) -> bool {
    (3..=8).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        && value.bytes().any(|b| b.is_ascii_digit())
}

/// Tells whether `code` has the GSS shape: a nation letter (`E`, `W`, `S`, `N`, `L`, `M`)
/// and eight digits (`E38000225`, `E92000001`; ONS pseudo codes such as `E99999999` too).
pub(crate) fn is_gss_code(code: &str) -> bool {
    let bytes = code.as_bytes();
    bytes.len() == 9
        && matches!(bytes[0], b'E' | b'W' | b'S' | b'N' | b'L' | b'M')
        && bytes[1..].iter().all(u8::is_ascii_digit)
}

/// Tells whether `code` has the shape of an ODS code of `lengths` characters: upper-case
/// letters and digits, at least one digit (sub-ICB `15F`, `W2U3Z`; local authority `713`).
pub(crate) fn is_short_ods_code(code: &str, lengths: &[usize]) -> bool {
    lengths.contains(&code.len())
        && code
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        && code.bytes().any(|b| b.is_ascii_digit())
}

/// Tells whether `code` is a sub-ICB location code: GSS, or ODS of 3 or 5 characters (the
/// NI local commissioning groups' `ZC010` codes have the 5-character shape).
pub(crate) fn is_sub_icb_code(code: &str) -> bool {
    is_gss_code(code) || is_short_ods_code(code, &[3, 5])
}

/// Tells whether `name` is `prefix`, two digits, `suffix` (for example `lad25cd`).
fn vintage(name: &str, prefix: &str, suffix: &str) -> bool {
    name.strip_prefix(prefix)
        .and_then(|rest| rest.strip_suffix(suffix))
        .is_some_and(|mid| mid.len() == 2 && mid.bytes().all(|b| b.is_ascii_digit()))
}

/// Finds each demographics column when the header is exactly those eight names.
fn demographics_index(lower: &[String]) -> Option<[usize; 8]> {
    if lower.len() != DEMOGRAPHICS_COLUMNS.len() {
        return None;
    }
    let mut index = [0; 8];
    for (slot, name) in index.iter_mut().zip(DEMOGRAPHICS_COLUMNS) {
        *slot = lower.iter().position(|n| n == name)?;
    }
    Some(index)
}

/// Finds the GSS (`SICBLnnCD`, `LOCnnCD`, `CCGnnCD`) and ODS (`…CDH`) columns of a lookup.
fn code_map_columns(lower: &[String]) -> Option<(usize, usize)> {
    lower.iter().enumerate().find_map(|(gss, name)| {
        let is_gss = ["sicbl", "loc", "ccg"]
            .iter()
            .any(|prefix| vintage(name, prefix, "cd"));
        if !is_gss {
            return None;
        }
        let ods_name = format!("{name}h");
        let ods = lower.iter().position(|n| *n == ods_name)?;
        Some((gss, ods))
    })
}

/// Columns only the ONSPD has (the NSPL has the same data under other names, or not at all).
fn is_onspd_marker(name: &str) -> bool {
    matches!(
        name,
        "oscty" | "osward" | "oslaua" | "parish" | "oa01" | "oa01cd" | "statsward" | "casward"
    ) || vintage(name, "parncp", "cd")
        || vintage(name, "wdstl", "cd")
        || vintage(name, "wdcas", "cd")
}

/// For a header with a postcode column and `doterm`: the kind and columns, or the name of
/// the first required column that is missing. `None` when the header is not NSPL/ONSPD-like.
fn ons_columns(lower: &[String]) -> Option<Result<(FileKind, OnsColumns), &'static str>> {
    let find = |accept: &dyn Fn(&str) -> bool| lower.iter().position(|n| accept(n));
    let postcodes: Vec<usize> = ["pcds", "pcd7", "pcd", "pcd8", "pcd2"]
        .iter()
        .filter_map(|want| lower.iter().position(|n| n == want))
        .collect();
    let doterm = find(&|n| n == "doterm");
    let (false, Some(doterm)) = (postcodes.is_empty(), doterm) else {
        return None;
    };
    let local_authority = find(&|n| matches!(n, "laua" | "oslaua") || vintage(n, "lad", "cd"));
    let country = find(&|n| n == "ctry" || vintage(n, "ctry", "cd"));
    let sub_icb = find(&|n| {
        matches!(n, "sicbl" | "ccg") || vintage(n, "sicbl", "cd") || vintage(n, "ccg", "cd")
    });
    let result = match (local_authority, country, sub_icb) {
        (None, _, _) => Err("a local authority column (laua, oslaua or ladNNcd)"),
        (_, None, _) => Err("a country column (ctry or ctryNNcd)"),
        (_, _, None) => Err("a sub-ICB column (sicbl, ccg or sicblNNcd)"),
        (Some(local_authority), Some(country), Some(sub_icb)) => {
            let onspd = lower.len() >= 50 || lower.iter().any(|n| is_onspd_marker(n));
            let kind = if onspd {
                FileKind::Onspd
            } else {
                FileKind::Nspl
            };
            Ok((
                kind,
                OnsColumns {
                    postcodes,
                    doterm,
                    local_authority,
                    country,
                    sub_icb,
                },
            ))
        }
    };
    Some(result)
}

#[cfg(test)]
mod tests {
    use super::{FileKind, detect};

    const NSPL_MAY_2025: &str = "pcd,pcd2,pcds,dointr,doterm,usertype,oseast1m,osnrth1m,osgrdind,oa21,cty,ced,laua,ward,nhser,ctry,rgn,pcon,ttwa,itl,park,lsoa21,msoa21,wz11,sicbl,bua24,ruc21,oac11,lat,long,lep1,lep2,pfa,imd,icb";
    const NSPL_AUG_2025: &str = "pcd7,pcd8,pcds,dointr,doterm,usrtypind,east1m,north1m,gridind,oa21cd,cty25cd,ced25cd,lad25cd,wd25cd,nhser24cd,ctry25cd,rgn25cd,pcon24cd,ttwa15cd,itl25cd,npark16cd,lsoa21cd,msoa21cd,wz11cd,sicbl24cd,bua24cd,ruc21ind,oac11ind,lat,long,lep21cd1,lep21cd2,pfa23cd,imd20ind,icb23cd";
    const NSPL_2021: &str = "pcd,pcd2,pcds,dointr,doterm,usertype,oseast1m,osnrth1m,osgrdind,oa11,cty,ced,laua,ward,hlthau,nhser,ctry,rgn,pcon,eer,teclec,ttwa,pct,nuts,park,lsoa11,msoa11,wz11,ccg,bua11,buasd11,ru11ind,oac11,lat,long,lep1,lep2,pfa,imd,calncv,stp";
    const ONSPD_FEB_2023: &str = "pcd,pcd2,pcds,dointr,doterm,oscty,ced,oslaua,osward,parish,usertype,oseast1m,osnrth1m,osgrdind,oshlthau,nhser,ctry,rgn,streg,pcon,eer,teclec,ttwa,pct,itl,statsward,oa01,casward,park,lsoa01,msoa01,ur01ind,oac01,oa11,lsoa11,msoa11,wz11,sicbl,bua11,buasd11,ru11ind,oac11,lat,long,lep1,lep2,pfa,imd,calncv,icb,oa21,lsoa21,msoa21";
    const ONSPD_FEB_2026: &str = "pcd7,pcd8,pcds,dointr,doterm,cty25cd,ced25cd,lad25cd,wd25cd,parncp25cd,usrtypind,east1m,north1m,gridind,hlth19cd,nhser24cd,ctry25cd,rgn25cd,ssr95cd,pcon24cd,eer20cd,educ23cd,ttwa15cd,pco19cd,itl25cd,wdstl05cd,oa01cd,wdcas03cd,npark16cd,lsoa01cd,msoa01cd,ruc01ind,oac01ind,oa11cd,lsoa11cd,msoa11cd,wz11cd,sicbl24cd,bua24cd,ruc11ind,oac11ind,lat,long,lep21cd1,lep21cd2,pfa23cd,imd20ind,cal24cd,icb23cd,oa21cd,lsoa21cd,msoa21cd,ruc21ind";
    const NHSPD_ROW: &str = r#""SW1A 1AA","SW1A 1AA","198001","","5290","01796","E99999999","713","E09000033","E05013806","1","1","E92000001","Q36","E12000007","QA3","Y56","W2U3Z","","","","","E00023938","Q71","Y53","E01004736","","","N21","N44","Q04","5LC","Y45","E14001172","Y0801","5LC","529090","0179645","E00023938","E01004736","E02000977","E56000021","QRV","Z4P6N","P9W2J","G1U9X","E00023938","E01004736","E02000977""#;
    const EPRACCUR_ROW: &str = r#""A81043","THE MANOR HOUSE SURGERY","Y54","Q74","THE MANOR HOUSE SURGERY","BRAIDWOOD ROAD, NORMANBY","MIDDLESBROUGH","CLEVELAND","","TS6 0HA","19740401","","A","B","00M","20130401","","01642 374788","","","","1","","00M","","25","""#;

    fn nhspd_43() -> String {
        NHSPD_ROW.split(',').take(43).collect::<Vec<_>>().join(",")
    }

    #[test]
    fn detection_table() {
        let aug_2026 = NSPL_AUG_2025
            .replace("cty25cd", "cty26cd")
            .replace("lad25cd", "lad26cd")
            .replace("ctry25cd", "ctry26cd")
            .replace("sicbl24cd", "sicbl26cd");
        let table: Vec<(String, FileKind)> = vec![
            (NHSPD_ROW.to_owned(), FileKind::Nhspd),
            (nhspd_43(), FileKind::Nhspd),
            (NHSPD_ROW.replace('"', ""), FileKind::Nhspd),
            (NSPL_MAY_2025.to_owned(), FileKind::Nspl),
            (NSPL_AUG_2025.to_owned(), FileKind::Nspl),
            (aug_2026, FileKind::Nspl),
            (NSPL_2021.to_owned(), FileKind::Nspl),
            (NSPL_AUG_2025.to_uppercase(), FileKind::Nspl),
            (ONSPD_FEB_2023.to_owned(), FileKind::Onspd),
            (ONSPD_FEB_2026.to_owned(), FileKind::Onspd),
            (EPRACCUR_ROW.to_owned(), FileKind::Epraccur),
            ("SICBL23CD,SICBL23CDH,SICBL23NM".to_owned(), FileKind::SubIcbCodeMap),
            ("SICBL24CD,SICBL24CDH,SICBL24NM,ICB24CD,ICB24CDH,ICB24NM,NHSER24CD,NHSER24CDH,NHSER24NM".to_owned(), FileKind::SubIcbCodeMap),
            ("FID,LOC22CD,LOC22CDH,LOC22NM".to_owned(), FileKind::SubIcbCodeMap),
            ("CCG20CD,CCG20CDH,CCG20NM,STP20CD,STP20CDH,STP20NM".to_owned(), FileKind::SubIcbCodeMap),
            ("nhs_number,birth_date,postcode,previous_postcode,gp_practice,flag,date_of_death,last_updated".to_owned(), FileKind::Demographics),
            ("last_updated,nhs_number,birth_date,postcode,previous_postcode,gp_practice,flag,date_of_death".to_owned(), FileKind::Demographics),
        ];
        for (line, want) in &table {
            for head in [
                format!("{line}\n"),
                format!("{line}\r\nnext"),
                format!("\u{feff}{line}"),
                format!("\n\n{line}\n"),
            ] {
                assert_eq!(detect(head.as_bytes()), Ok(*want), "head {head:?}");
            }
        }
    }

    #[test]
    fn unknown_shapes_are_refused_without_row_values() {
        let table: &[(&str, &str)] = &[
            ("", "an empty file"),
            ("\u{feff}\r\n\r\n", "an empty file"),
            ("{\"postcode\": \"LS1 4AP\"}", "JSON, not CSV"),
            ("<html>", "XML or HTML, not CSV"),
            (
                "name,age,email\n",
                "a header row of 3 columns: name, age, email",
            ),
            (
                "a,b,c,d,e,f,g\n",
                "a header row of 7 columns: a, b, c, d, e, ...",
            ),
            (
                "\"LS1 4AP\",\"Jane\",\"1\"\n",
                "a headerless row of 3 columns",
            ),
            ("LS1 4AP,9990000018\n", "a headerless row of 2 columns"),
            (
                "pcds,doterm,ctry\n",
                "a header row of 3 columns: pcds, doterm, ctry without a local authority column (laua, oslaua or ladNNcd)",
            ),
            (
                "pcds,doterm,laua,ctry\n",
                "a header row of 4 columns: pcds, doterm, laua, ctry without a sub-ICB column (sicbl, ccg or sicblNNcd)",
            ),
            ("\0\0\0binary", "binary data, not CSV text"),
        ];
        for (head, found) in table {
            let refusal = detect(head.as_bytes()).expect_err(head);
            assert_eq!(refusal.found, *found, "head {head:?}");
            assert!(refusal.to_string().contains("NHSPD"), "{refusal}");
            assert!(refusal.to_string().contains("epraccur"), "{refusal}");
        }
        // A 49-column row whose postcodes are not postcodes is not NHSPD; a 27-column header is
        // not epraccur.
        // A 49-column row cut after 43 columns by the end of the head is not a 43-column NHSPD.
        let bad_first = format!("{}\n", NHSPD_ROW.replace("SW1A 1AA", "nowhere"));
        let cut = format!("{bad_first}{}", nhspd_43());
        assert!(detect(cut.as_bytes()).is_err());
        let whole = format!("{bad_first}{NHSPD_ROW}\n");
        assert_eq!(detect(whole.as_bytes()), Ok(FileKind::Nhspd));
        let not_nhspd = NHSPD_ROW.replace("SW1A 1AA", "nowhere");
        assert!(detect(not_nhspd.as_bytes()).is_err());
        let header_27 = (1..=27)
            .map(|i| format!("c{i}"))
            .collect::<Vec<_>>()
            .join(",");
        assert!(detect(header_27.as_bytes()).is_err());
    }
}
