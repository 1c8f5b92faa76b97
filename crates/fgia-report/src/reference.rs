//! The survey's reference values (`datasets/reference/survey-results.csv`), each with its
//! provenance.

use std::path::Path;

use crate::ReportError;

/// One reported value.
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceValue {
    /// Survey table (`T2`..`T6`).
    pub table: String,
    /// Survey section.
    pub section: String,
    /// Paradigm.
    pub paradigm: String,
    /// Family within the paradigm.
    pub family: String,
    /// Method name.
    pub method: String,
    /// Venue (`CVPR`, `ICCV`, ...), empty where not given.
    pub venue: String,
    /// Year of publication, empty where not given.
    pub year: String,
    /// Backbone.
    pub backbone: String,
    /// Input resolution as given (may be free text or empty).
    pub resolution: String,
    /// Dataset name.
    pub dataset: String,
    /// Metric (`top1`, `recall@1`, ...).
    pub metric: String,
    /// Value in percent.
    pub value: f64,
    /// Where the value comes from (`survey`, `hawkeye`, `unverified-med`, ...).
    pub provenance: String,
    /// Remarks.
    pub note: String,
}

impl ReferenceValue {
    /// Whether the value was never checked against a document.
    pub fn is_unverified(&self) -> bool {
        self.provenance.starts_with("unverified")
    }

    /// The provenance as shown beside the value.
    pub fn provenance_label(&self) -> String {
        match self.provenance.as_str() {
            "survey" => "survey (TPAMI text)".into(),
            "authors-leaderboard" => "survey authors' leaderboard".into(),
            "hawkeye" => "Hawkeye results.csv".into(),
            p if p.starts_with("unverified") => format!("UNVERIFIED ({})", p.trim_start_matches("unverified-")),
            p => p.replace("readme:", "README of ").replace("third-party-README of ", "third-party README of "),
        }
    }
}

/// Splits one CSV line (RFC 4180 quoting).
fn split_csv(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut field)),
            (c, _) => field.push(c),
        }
    }
    out.push(field);
    out
}

/// Reads the reference CSV.
pub fn read_reference(path: &Path) -> Result<Vec<ReferenceValue>, ReportError> {
    let text = std::fs::read_to_string(path).map_err(|e| ReportError::Io { path: path.to_path_buf(), source: e })?;
    let mut lines = text.lines();
    let header = split_csv(lines.next().unwrap_or_default());
    let col = |name: &str| -> Result<usize, ReportError> {
        header.iter().position(|h| h == name).ok_or_else(|| ReportError::Format { path: path.to_path_buf(), line: 1, message: format!("no column '{name}'") })
    };
    let idx = [
        col("table")?,
        col("section")?,
        col("paradigm")?,
        col("family")?,
        col("method")?,
        col("backbone")?,
        col("resolution")?,
        col("dataset")?,
        col("metric")?,
        col("value")?,
        col("provenance")?,
        col("note")?,
        col("venue")?,
        col("year")?,
    ];
    let mut out = Vec::new();
    for (i, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let f = split_csv(line);
        let get = |k: usize| f.get(idx[k]).cloned().unwrap_or_default();
        let value: f64 = get(9).parse().map_err(|_| ReportError::Format {
            path: path.to_path_buf(),
            line: i + 2,
            message: format!("value '{}' is not a number", get(9)),
        })?;
        out.push(ReferenceValue {
            table: get(0),
            section: get(1),
            paradigm: get(2),
            family: get(3),
            method: get(4),
            venue: get(12),
            year: get(13),
            backbone: get(5),
            resolution: get(6),
            dataset: get(7),
            metric: get(8),
            value,
            provenance: get(10),
            note: get(11),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_fields_and_labels() {
        assert_eq!(split_csv(r#"a,"b, c","say ""hi""",,d"#), vec!["a", "b, c", r#"say "hi""#, "", "d"]);
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("r.csv");
        std::fs::write(
            &p,
            "table,section,paradigm,family,method,ref,venue,year,backbone,resolution,train_annotations,dataset,metric,value,provenance,note\n\
             T4,5.4,baseline,resolution study,ResNet-50 (vanilla),,,,ResNet-50,224,none,CUB-200-2011,top1,81.6,survey,\"recipe, not stated\"\n\
             T2,5.2.1,x,y,B-CNN,1,ICCV,2015,VGG-16,448,none,CUB-200-2011,top1,84.1,unverified-med,\n",
        )
        .expect("write");
        let r = read_reference(&p).expect("reads");
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].value, 81.6);
        assert_eq!(r[0].note, "recipe, not stated");
        assert_eq!((r[1].venue.as_str(), r[1].year.as_str()), ("ICCV", "2015"));
        assert!(!r[0].is_unverified() && r[1].is_unverified());
        assert_eq!(r[1].provenance_label(), "UNVERIFIED (med)");
        std::fs::write(&p, "table,section,paradigm,family,method,ref,venue,year,backbone,resolution,train_annotations,dataset,metric,value,provenance,note\nT4,,,,,,,,,,,,top1,eighty,survey,\n").expect("write");
        let e = read_reference(&p).expect_err("bad value");
        assert!(e.to_string().contains(":2:"), "{e}");
    }
}
