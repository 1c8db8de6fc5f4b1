use super::*;
use serde_json::json;

fn row(line: u64, email: &str, vars: serde_json::Value) -> Arc<Row> {
    let serde_json::Value::Object(vars) = vars else { panic!("vars must be an object") };
    Arc::new(Row { line, email: Address::new(email).unwrap(), vars: crate::send::input::Vars::Json(vars) })
}

fn raw(message: &str) -> MessageSpec {
    MessageSpec { message: Some(message.into()), ..MessageSpec::default() }
}

fn text(r: &Rendered) -> String {
    String::from_utf8(r.body.bytes().to_vec()).unwrap()
}

fn now() -> SystemTime {
    UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000)
}

#[test]
fn a_raw_template_gets_its_variables_and_the_headers_it_lacks() {
    let t = MessageTemplate::new(
        &raw("From: News <news@example.com>\nSubject: Hi {{ name }}\n\nDear {{ name }},\nline 2\n"),
        "c1",
    )
    .unwrap();
    let r = t.render(&row(7, "ann@x.test", json!({"name": "Ann"})), now()).unwrap();
    let m = text(&r);
    assert!(m.starts_with("From: News <news@example.com>\r\nSubject: Hi Ann\r\n"), "{m}");
    assert!(m.contains("\r\nTo: <ann@x.test>\r\n"), "{m}");
    assert!(m.contains("\r\nDate: Tue, 14 Nov 2023 22:13:20 +0000\r\n"), "{m}");
    assert!(m.contains("\r\nMessage-ID: <c1.7@example.com>\r\n\r\nDear Ann,\r\nline 2\r\n"), "{m}");
    assert_eq!(r.sender.unwrap().as_str(), "news@example.com", "the envelope sender defaults to From");
}

#[test]
fn header_injection_is_refused_and_bodies_may_hold_newlines() {
    let t = MessageTemplate::new(&raw("From: a@example.com\nSubject: {{ s }}\n\n{{ s }}\n"), "c").unwrap();
    for evil in ["x\r\nBcc: victim@evil.test", "x\nBcc: v@e.test", "x\rBcc: v", "x\r\n\r\nbody"] {
        let err = t.render(&row(2, "a@x.test", json!({ "s": evil })), now()).unwrap_err();
        assert!(err.contains("header injection"), "{evil:?}: {err}");
    }
    let t = MessageTemplate::new(&raw("From: a@example.com\nSubject: hi\n\n{{ s }}\n"), "c").unwrap();
    let r = t.render(&row(2, "a@x.test", json!({ "s": "two\nlines" })), now()).unwrap();
    assert!(text(&r).contains("\r\n\r\ntwo\r\nlines\r\n"));
}

#[test]
fn non_ascii_header_values_become_encoded_words() {
    let t = MessageTemplate::new(&raw("From: a@example.com\nSubject: {{ s }}\n\nx\n"), "c").unwrap();
    let r = t.render(&row(2, "a@x.test", json!({ "s": "Grüße" })), now()).unwrap();
    assert!(text(&r).contains("Subject: =?utf-8?B?R3LDvMOfZQ==?=\r\n"), "{}", text(&r));
}

#[test]
fn undefined_variables_reject_the_row_with_the_name() {
    let t =
        MessageTemplate::new(&raw("From: a@example.com\nSubject: x\n\nHi {{ first_name }}\n"), "c").unwrap();
    let err = t.render(&row(2, "a@x.test", json!({})), now()).unwrap_err();
    assert!(err.contains("undefined"), "{err}");
}

#[test]
fn start_up_errors() {
    let cases: Vec<(MessageSpec, &str)> = vec![
        (raw("Subject: x\n\nbody"), "no From header"),
        (raw("From: a@b.test\n\n{% if %}"), "template body"),
        (MessageSpec::default(), "no message"),
        (
            MessageSpec {
                subject: Some("x".into()),
                from: Some("a@b.test".into()),
                ..MessageSpec::default()
            },
            "--text and/or --html",
        ),
        (MessageSpec { text: Some("x".into()), ..MessageSpec::default() }, "needs --from"),
        (
            MessageSpec { text: Some("x".into()), from: Some("no at sign".into()), ..MessageSpec::default() },
            "--from",
        ),
        (
            MessageSpec {
                message: Some("From: a@b.test\n\nx".into()),
                subject: Some("s".into()),
                ..MessageSpec::default()
            },
            "cannot be combined",
        ),
    ];
    for (spec, want) in cases {
        let err = MessageTemplate::new(&spec, "c").expect_err(want).to_string();
        assert!(err.contains(want), "{want}: {err}");
    }
}

#[test]
fn a_templated_envelope_sender_is_verp() {
    let spec = MessageSpec {
        mail_from: Some("bounces+{{ id }}@example.com".into()),
        ..raw("From: a@example.com\n\nx")
    };
    let t = MessageTemplate::new(&spec, "c").unwrap();
    let r = t.render(&row(2, "a@x.test", json!({ "id": "u42" })), now()).unwrap();
    assert_eq!(r.sender.unwrap().as_str(), "bounces+u42@example.com");
    let err = t.render(&row(3, "a@x.test", json!({ "id": "a\r\nRCPT TO:<x@y>" })), now()).unwrap_err();
    assert!(err.contains("header injection"), "{err}");
    let err = t.render(&row(3, "a@x.test", json!({ "id": "<evil>" })), now()).unwrap_err();
    assert!(err.contains("--mail-from"), "{err}");
}

#[test]
fn a_built_message_is_mime_with_alternatives_and_attachments() {
    let spec = MessageSpec {
        from: Some("News Team <news@example.com>".into()),
        subject: Some("Hello {{ name }}".into()),
        text: Some("Hi {{ name }}".into()),
        html: Some("<p>Hi {{ name }}</p>".into()),
        attachments: vec![Attachment {
            name: "a.pdf".into(),
            content_type: "application/pdf".into(),
            bytes: vec![0, 1, 2, 255],
        }],
        ..MessageSpec::default()
    };
    let t = MessageTemplate::new(&spec, "c9").unwrap();
    let r = t.render(&row(3, "bob@y.test", json!({ "name": "Bob <b>" })), now()).unwrap();
    let m = text(&r);
    for want in [
        "From: \"News Team\" <news@example.com>",
        "To: <bob@y.test>",
        "Subject: Hello Bob <b>",
        "Message-ID: <c9.3@example.com>",
        "multipart/mixed",
        "multipart/alternative",
        "Hi Bob &lt;b&gt;",
        "application/pdf",
        "AAEC/w==",
    ] {
        assert!(m.contains(want), "missing {want:?} in:\n{m}");
    }
    let err = t.render(&row(3, "bob@y.test", json!({ "name": "x\nBcc: v@e.test" })), now()).unwrap_err();
    assert!(err.contains("header injection"), "{err}");
}

#[test]
fn header_sections_are_checked_after_rendering() {
    assert!(check_header_section("From: a\r\nX-A: b\r\n continued\r\n").is_ok());
    assert!(check_header_section(" leading\r\n").is_err());
    assert!(check_header_section("no colon here\r\n").is_err());
    assert!(check_header_section("Bad Name: x\r\n").is_err());
    assert_eq!(split_message("A: b\r\nC: d\r\n\r\nbody\r\n"), ("A: b\r\nC: d\r\n", "body\r\n"));
    assert_eq!(split_message("A: b\n\n"), ("A: b\n", ""));
}

fn csv_row(header: &str, fields: &str) -> Arc<Row> {
    let text = format!("{header}\n{fields}\n");
    let mut rows = crate::send::input::Rows::new(
        Box::new(std::io::Cursor::new(text.into_bytes())),
        Some(crate::send::input::Format::Csv),
    )
    .unwrap();
    Arc::new(rows.next_row().unwrap().unwrap().unwrap())
}

#[test]
fn csv_rows_are_looked_up_in_place_with_email_line_and_campaign() {
    let t = MessageTemplate::new(
        &raw("From: a@example.com\nSubject: {{ first }}\n\n{{ email }} {{ line }} {{ campaign }} {{ first }}\n"),
        "c9",
    )
    .unwrap();
    let r = t.render(&csv_row("email,first", "Ann@X.test,Ann"), now()).unwrap();
    assert!(text(&r).contains("Subject: Ann\r\n"), "{}", text(&r));
    assert!(text(&r).ends_with("\r\n\r\nAnn@X.test 2 c9 Ann\r\n"), "{}", text(&r));
    // A column named like a built-in variable wins, except `email`: always the parsed address.
    let r = t.render(&csv_row("email,first,line,campaign", " b@y.test ,B,L,C"), now()).unwrap();
    assert!(text(&r).ends_with("\r\n\r\nb@y.test L C B\r\n"), "{}", text(&r));
    let err = t.render(&csv_row("email,name", "c@z.test,Cy"), now()).unwrap_err();
    assert!(err.contains("undefined"), "{err}");
}

#[test]
fn a_recipe_composes_the_envelope_and_message_or_says_why_not() {
    use crate::engine::Compose;
    let t = Arc::new(
        MessageTemplate::new(&raw("From: a@example.com\nSubject: {{ s }}\n\nhello\n"), "c").unwrap(),
    );
    let ok = Box::new(Recipe {
        row: Arc::unwrap_or_clone(row(3, "r@x.test", json!({ "s": "hi" }))),
        template: Arc::clone(&t),
    });
    let m = ok.compose(SystemTime::now()).unwrap();
    assert_eq!(m.envelope.sender.as_ref().unwrap().as_str(), "a@example.com");
    assert_eq!(m.envelope.recipients.iter().map(|r| r.as_str()).collect::<Vec<_>>(), ["r@x.test"]);
    let body = String::from_utf8(m.body.bytes().to_vec()).unwrap();
    assert!(body.contains("Subject: hi\r\n") && body.ends_with("\r\n\r\nhello\r\n"), "{body}");
    let bad = Box::new(Recipe {
        row: Arc::unwrap_or_clone(row(4, "s@x.test", json!({ "s": "a\nBcc: x@y" }))),
        template: t,
    });
    let refused = bad.compose(SystemTime::now()).unwrap_err();
    assert_eq!(refused.recipients.iter().map(|r| r.as_str()).collect::<Vec<_>>(), ["s@x.test"]);
    assert!(refused.reason.contains("header injection"), "{}", refused.reason);
}

#[test]
fn a_template_of_headers_only_still_gets_a_whole_header_section() {
    let spec = MessageSpec { from: Some("a@example.com".into()), ..raw("Subject: {{ s }}") };
    let t = MessageTemplate::new(&spec, "c").unwrap();
    let m = text(&t.render(&row(2, "r@x.test", json!({ "s": "hi" })), now()).unwrap());
    assert!(m.starts_with("Subject: hi\r\nFrom: <a@example.com>\r\nTo: <r@x.test>\r\n"), "{m}");
    assert!(m.ends_with(">\r\n\r\n"), "one empty line ends the header section: {m:?}");
}

mod fast_path {
    use super::*;
    use proptest::prelude::*;

    fn csv(first: &str, city: &str) -> Arc<Row> {
        let names: Arc<[String]> = ["email", "first", "city"].map(String::from).into();
        let fields = crate::send::input::Fields::from(&["r@x.test", first, city][..]);
        let vars = crate::send::input::Vars::Csv { names, fields };
        Arc::new(Row { line: 42, email: Address::new("r@x.test").unwrap(), vars })
    }

    /// The fast path's answer and minijinja's, for the template `name` of `t`.
    fn both(
        t: &MessageTemplate,
        name: &str,
        header: bool,
        row: &Arc<Row>,
    ) -> (Option<String>, Result<String, String>) {
        let fast = t.simple_of(name).and_then(|s| s.render(row, &t.campaign_value, header));
        let ctx = Context { row: Arc::clone(row), campaign: t.campaign_value.clone(), unsubscribe: None };
        let template = t.env.get_template(name).unwrap();
        (fast, template.render(Value::from_object(ctx)).map_err(|e| e.to_string()))
    }

    #[test]
    fn typical_templates_take_it() {
        let spec = MessageSpec {
            mail_from: Some("bounces+{{ line }}@example.com".into()),
            ..raw(
                "From: a@example.com\nSubject: Hello {{ first }}\n\nDear {{ first }} of {{ city }}, {{ email }}\n",
            )
        };
        let t = MessageTemplate::new(&spec, "c").unwrap();
        let row = csv("Ann", "Oslo");
        assert_eq!(
            both(&t, HEAD, true, &row).0.as_deref(),
            Some("From: a@example.com\nSubject: Hello Ann\n")
        );
        assert_eq!(both(&t, BODY, false, &row).0.as_deref(), Some("Dear Ann of Oslo, r@x.test\n"));
        assert_eq!(both(&t, MAIL_FROM, true, &row).0.as_deref(), Some("bounces+42@example.com"));
        // What it does not handle goes to minijinja, which gives the error.
        let (fast, slow) = both(&t, HEAD, true, &csv("A\r\nBcc: x@y.test", "Oslo"));
        assert!(fast.is_none() && slow.unwrap_err().contains("header injection"));
    }

    fn part() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z .,:\n\t{}ü]{0,6}",
            Just("{{ first }}".to_string()),
            Just("{{city}}".to_string()),
            Just("{{ email }}".to_string()),
            Just("{{ line }}".to_string()),
            Just("{{ campaign }}".to_string()),
            Just("{{ missing }}".to_string()),
            Just("{{ first|upper }}".to_string()),
            Just("{% if city %}[{{ city }}]{% endif %}".to_string()),
        ]
    }

    proptest! {
        #[test]
        fn whenever_it_answers_it_renders_what_minijinja_renders(
            parts in prop::collection::vec(part(), 0..8),
            first in "[ -~\r\nüé\u{1}]{0,8}",
            city in "[ -~üé]{0,8}",
        ) {
            let source = parts.concat();
            let spec = MessageSpec {
                mail_from: Some(source.clone()),
                ..raw(&format!("From: a@example.com\n\n{source}"))
            };
            // Random text may not be a valid template at all: nothing to compare then.
            let Ok(t) = MessageTemplate::new(&spec, "camp") else { return Ok(()) };
            let row = csv(&first, &city);
            for (name, header) in [(BODY, false), (MAIL_FROM, true)] {
                let (fast, slow) = both(&t, name, header, &row);
                if let Some(fast) = fast {
                    prop_assert_eq!(Ok(fast), slow, "{:?} as {}", source, name);
                }
            }
        }
    }
}

#[test]
fn a_literal_from_is_parsed_once_and_only_when_it_is_certain() {
    let cases = [
        ("From: News <news@example.com>\nSubject: {{ s }}\n", Some("news@example.com")),
        ("Subject: x\nfrom: a@example.com\n", Some("a@example.com")),
        ("From: {{ sender }}\n", None),
        ("From: News <news@{{ d }}>\n", None),
        ("{% if x %}From: a@example.com\n{% endif %}Subject: s\n", None),
        ("{# note #}From: a@example.com\n", None),
        ("From: News\n <news@example.com>\n", None),
        ("Subject: no from\n", None),
    ];
    for (head, want) in cases {
        assert_eq!(literal_from(head).as_ref().map(Address::as_str), want, "{head:?}");
    }
    // Otherwise the rendered header gives the address, message by message.
    let t = MessageTemplate::new(&raw("From: {{ f }}\nSubject: s\n\nb\n"), "c").unwrap();
    let r = t.render(&row(2, "r@x.test", json!({ "f": "A <a@example.com>" })), now()).unwrap();
    assert_eq!(r.sender.as_ref().map(Address::as_str), Some("a@example.com"));
    assert!(text(&r).contains("\r\nMessage-ID: <c.2@example.com>\r\n"), "{}", text(&r));
    let err = t.render(&row(3, "r@x.test", json!({ "f": "nobody" })), now()).unwrap_err();
    assert!(err.contains("no address"), "{err}");
}

mod direct {
    use super::*;
    use proptest::prelude::*;

    fn takes_it(message: &str, from: Option<&str>) -> bool {
        let spec = MessageSpec { from: from.map(String::from), ..raw(message) };
        let t = MessageTemplate::new(&spec, "c").unwrap();
        matches!(t.kind, Kind::Raw { direct: Some(_), .. })
    }

    #[test]
    fn only_header_sections_whose_lines_are_fixed_take_it() {
        let from = Some("a@example.com");
        let cases = [
            ("From: a@example.com\nSubject: Hi {{ first }}\n\nDear {{ first }}\n", None, true),
            ("Subject: Hi {{ first }}\n  more {{ city }}\n\n{{ first }}\n", from, true),
            ("Subject: x\n\nno variables\n", from, true),
            // The domain of the Message-ID would come from a rendered From header.
            ("From: {{ f }}\nSubject: x\n\nb\n", None, false),
            // A variable that starts a line or stands in a name could make any line.
            ("{{ extra }}\nSubject: x\n\nb\n", from, false),
            ("Subject: x\n{{ extra }}: y\n\nb\n", from, false),
            ("X-{{ n }}: y\n\nb\n", from, false),
            // Not simple: minijinja renders it.
            ("Subject: {{ first|upper }}\n\nb\n", from, false),
            ("Subject: x\n\n{% if a %}b{% endif %}\n", from, false),
            // A header section that is not `Name: value` lines: the general path says why.
            ("Subject x\n\nb\n", from, false),
            (" Subject: x\n\nb\n", from, false),
        ];
        for (message, from, want) in cases {
            assert_eq!(takes_it(message, from), want, "{message:?}");
        }
    }

    /// A CSV row; its `email` column is written otherwise than the parsed address it gives.
    fn csv(names: &Arc<[String]>, first: &str, city: &str) -> Arc<Row> {
        let fields = crate::send::input::Fields::from(&[" R@x.test ", first, city][..]);
        let vars = crate::send::input::Vars::Csv { names: Arc::clone(names), fields };
        Arc::new(Row { line: 9, email: Address::new("R@x.test").unwrap(), vars })
    }

    fn piece() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z .:\n\r\tü]{0,5}",
            Just("{{ first }}".to_string()),
            Just("{{ city }}".to_string()),
            Just("{{ line }}".to_string()),
            Just("{{ email }}".to_string()),
            Just("{{ missing }}".to_string()),
        ]
    }

    proptest! {
        /// The fast path gives the general path's message, byte for byte, or leaves the row
        /// to it.
        #[test]
        fn it_renders_what_the_general_path_renders(
            subject in prop::collection::vec(piece(), 0..4),
            continued in prop::collection::vec(piece(), 0..3),
            body in prop::collection::vec(piece(), 0..8),
            first in "[ -~\r\n.üé\u{1}]{0,8}",
            city in "[ -~.üé]{0,8}",
            bind in any::<bool>(),
            unsubscribe in any::<bool>(),
        ) {
            let message = format!(
                "From: a@example.com\nSubject: {}\n {}\n\n{}",
                subject.concat(),
                continued.concat(),
                body.concat()
            );
            let spec = MessageSpec { unsubscribe: unsubscribe.then(unsubscribe_spec), ..raw(&message) };
            let Ok(mut fast) = MessageTemplate::new(&spec, "camp") else { return Ok(()) };
            // Bound to the input's columns when `bind` says so: variables found by position.
            let names: Arc<[String]> = ["email", "first", "city"].map(String::from).into();
            if bind {
                fast.bind_columns(&names);
            }
            let mut general = MessageTemplate::new(&spec, "camp").unwrap();
            if let Kind::Raw { direct, .. } = &mut general.kind {
                *direct = None;
            }
            let row = csv(&names, &first, &city);
            let (a, b) = (fast.render(&row, now()), general.render(&row, now()));
            let key = |r: Result<Rendered, String>| r.map(|r| (r.sender, r.body));
            prop_assert_eq!(key(a), key(b), "{:?}", message);
        }
    }
}

#[test]
fn header_values_refuse_breaks_and_controls_and_encode_non_ascii() {
    let cases: [(&str, Result<&str, &str>); 12] = [
        ("Ann", Ok("Ann")),
        ("", Ok("")),
        ("a\rb", Err("line break")),
        ("nul\u{0}", Err("control")),
        // A break and a control: the break is what is reported.
        ("\u{7}a\nb", Err("line break")),
        ("tab\there", Ok("tab\there")),
        ("Grüße", Ok("=?utf-8?B?R3LDvMOfZQ==?=")),
        ("a\r\nBcc: x@y.test", Err("line break")),
        ("a\nb", Err("line break")),
        ("bell\u{7}", Err("control")),
        ("del\u{7f}", Err("control")),
        ("next line\u{85}", Err("control")),
    ];
    for (value, want) in cases {
        match (header_text(value), want) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{value:?}"),
            (Err(got), Err(want)) => assert!(got.contains(want), "{value:?}: {got}"),
            (got, want) => panic!("{value:?}: {got:?}, want {want:?}"),
        }
    }
}

fn unsubscribe_spec() -> crate::send::unsubscribe::Unsubscribe {
    let secret = crate::send::unsubscribe::Secret::new(b"a secret of at least sixteen bytes").unwrap();
    crate::send::unsubscribe::Unsubscribe::new(
        Some("https://example.com/u/{{ token }}"),
        Some("unsub@example.com"),
        secret,
    )
    .unwrap()
}

/// The `List-Unsubscribe` value a message for `email` of campaign `c1` must carry.
fn unsubscribe_value(email: &str) -> String {
    let token = unsubscribe_spec().secret().token("c1", email);
    format!("<https://example.com/u/{token}>, <mailto:unsub@example.com?subject=unsubscribe%20{token}>")
}

#[test]
fn unsubscribe_headers_are_per_recipient_on_every_path() {
    let one_click = "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n";
    let raw_spec = |message: &str| MessageSpec { unsubscribe: Some(unsubscribe_spec()), ..raw(message) };
    // The fast path (fixed header lines), the general path (a tag in the header section), and
    // a body that links to the recipient's URL (minijinja renders that one).
    for message in [
        "From: a@example.com\nSubject: hi {{ name }}\n\nHi {{ name }}\n",
        "From: a@example.com\nSubject: {% if name %}hi{% endif %}\n\nHi\n",
        "From: a@example.com\nSubject: hi\n\nLeave: {{ unsubscribe_url }}\n",
    ] {
        let t = MessageTemplate::new(&raw_spec(message), "c1").unwrap();
        for email in ["ann@x.test", "bob@y.test"] {
            let m = text(&t.render(&row(3, email, json!({"name": "N"})), now()).unwrap());
            let want = format!("\r\nList-Unsubscribe: {}\r\n{one_click}\r\n", unsubscribe_value(email));
            assert!(m.contains(&want), "{message:?}: {m}");
            if message.contains("unsubscribe_url") {
                let token = unsubscribe_spec().secret().token("c1", email);
                assert!(m.ends_with(&format!("Leave: https://example.com/u/{token}\r\n")), "{m}");
            }
        }
    }
    // A built message: mail-builder writes the same URIs.
    let spec = MessageSpec {
        subject: Some("s".into()),
        text: Some("t".into()),
        from: Some("a@example.com".into()),
        unsubscribe: Some(unsubscribe_spec()),
        ..MessageSpec::default()
    };
    let t = MessageTemplate::new(&spec, "c1").unwrap();
    let m = text(&t.render(&row(3, "ann@x.test", json!({})), now()).unwrap());
    let unfolded = m.replace("\r\n ", " ").replace("\r\n\t", " ");
    assert!(unfolded.contains(&format!("List-Unsubscribe: {}\r\n", unsubscribe_value("ann@x.test"))), "{m}");
    assert!(m.contains(one_click), "{m}");
    // A template with its own List-Unsubscribe cannot get a second one.
    let err = MessageTemplate::new(&raw_spec("From: a@example.com\nList-Unsubscribe: <x>\n\nb\n"), "c")
        .unwrap_err();
    assert!(err.to_string().contains("own List-Unsubscribe"), "{err}");
    // Without a URL (mailto only) there is no one-click header.
    let mut mailto_only = raw_spec("From: a@example.com\n\nb\n");
    let secret = crate::send::unsubscribe::Secret::new(b"a secret of at least sixteen bytes").unwrap();
    mailto_only.unsubscribe =
        Some(crate::send::unsubscribe::Unsubscribe::new(None, Some("u@example.com"), secret).unwrap());
    let m = text(
        &MessageTemplate::new(&mailto_only, "c1")
            .unwrap()
            .render(&row(3, "a@x.test", json!({})), now())
            .unwrap(),
    );
    assert!(
        m.contains("List-Unsubscribe: <mailto:u@example.com?subject=unsubscribe%20") && !m.contains("-Post"),
        "{m}"
    );
}

#[test]
fn printing_a_whole_map_or_list_rejects_the_row_naming_the_variable() {
    let vars = json!({"name": {"first": "Jo", "inner": {"a": 1}}, "tags": ["a", "b"]});
    for (template, named) in [
        ("Hi {{ name }}", "`name` is a whole map"),
        ("Tags: {{ tags }}", "`tags` is a whole list"),
        ("{{ name.inner }}", "`name.inner` is a whole map"),
    ] {
        for place in ["body", "subject"] {
            let message = match place {
                "body" => format!("From: a@example.com\nSubject: x\n\n{template}\n"),
                _ => format!("From: a@example.com\nSubject: {template}\n\nx\n"),
            };
            let t = MessageTemplate::new(&raw(&message), "c").unwrap();
            let err = t.render(&row(2, "a@x.test", vars.clone()), now()).unwrap_err();
            assert!(err.contains(named), "{place} {template}: {err}");
        }
    }
    let t = MessageTemplate::new(
        &raw("From: a@example.com\nSubject: {{ name.first }}\n\n{{ name.first }} {{ tags[1] }} {{ tags|length }}\n"),
        "c",
    )
    .unwrap();
    let r = t.render(&row(2, "a@x.test", vars), now()).unwrap();
    assert!(text(&r).contains("Subject: Jo\r\n") && text(&r).contains("\r\n\r\nJo b 2\r\n"), "{}", text(&r));
}
