//! What the benchmarks share: the synthetic lab result they all send.

/// A realistic lab result: ORU^R01 v2.5.1, patient, visit, order, 10 OBX with units, ranges and
/// flags, one NTE. Synthetic data only.
pub fn oru(control_id: &str) -> Vec<u8> {
    const OBX: [(&str, &str, &str, &str, &str, &str); 10] = [
        ("6690-2", "WBC", "7.2", "10*3/uL", "4.0-11.0", "N"),
        ("789-8", "RBC", "4.61", "10*6/uL", "4.20-5.40", "N"),
        ("718-7", "Hemoglobin", "11.8", "g/dL", "12.0-16.0", "L"),
        ("4544-3", "Hematocrit", "36.1", "%", "37.0-47.0", "L"),
        ("787-2", "MCV", "78.3", "fL", "80.0-100.0", "L"),
        ("785-6", "MCH", "25.6", "pg", "27.0-33.0", "L"),
        ("786-4", "MCHC", "32.7", "g/dL", "32.0-36.0", "N"),
        ("788-0", "RDW", "15.9", "%", "11.5-14.5", "H"),
        ("777-3", "Platelets", "262", "10*3/uL", "150-400", "N"),
        ("32623-1", "MPV", "9.8", "fL", "7.5-11.5", "N"),
    ];
    let mut m = format!(
        "MSH|^~\\&|LABSYS|MAINLAB|CAREGATE|HOSP|20240105103000+0100||ORU^R01^ORU_R01|{control_id}|P|2.5.1\r\
         PID|1||BEN0001234^^^NORTH-MRN^MR||SAMPLE^ALEX^Q^^^^L||19800101|F|||100 TEST ST^^SPRINGFIELD^IL^62701^USA^H||^PRN^PH^^1^217^5550100\r\
         PV1|1|O|LAB^DRAW^01^MAINLAB||||1234567^PHYSICIAN^PAT^^^^MD^^NPI|||||||||||VN000987654^^^MAINLAB^VN\r\
         ORC|RE|ORD-448812^EHR|FIL-99120^LABSYS||CM||||20240105093000+0100|||1234567^PHYSICIAN^PAT^^^^MD^^NPI\r\
         OBR|1|ORD-448812^EHR|FIL-99120^LABSYS|58410-2^CBC panel - Blood by Automated count^LN|||20240105093000+0100|||||||\
         |1234567^PHYSICIAN^PAT^^^^MD^^NPI||||||20240105102500+0100|||F\r"
    );
    for (i, (code, name, value, unit, range, flag)) in OBX.iter().enumerate() {
        m.push_str(&format!(
            "OBX|{}|NM|{code}^{name}^LN||{value}|{unit}^{unit}^UCUM|{range}|{flag}|||F|||20240105093000+0100\
             ||||20240105102000+0100\r",
            i + 1
        ));
    }
    m.push_str("NTE|1|L|Specimen received ambient; analysed within 2 hours of collection.\r");
    m.into_bytes()
}
