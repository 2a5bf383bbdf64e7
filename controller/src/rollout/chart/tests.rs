use super::*;

const T0: u64 = 1_790_000_000_000;

/// A realistic rollout: 5% then 25%, where the canary's errors and latency climb until it
/// is rolled back.
fn example() -> RolloutChart {
    let mut points = Vec::new();
    for i in 0..120u64 {
        let weight = if i < 60 { 5 } else { 25 };
        let wobble = ((i as f64) * 0.7).sin();
        let failing = i >= 80;
        let missing = i == 3; // a gap: no canary traffic in that interval
        points.push(ChartPoint {
            t_unix_ms: T0 + i * 5_000,
            canary_success_pct: (!missing).then(|| {
                if failing {
                    99.6 - (i - 80) as f64 * 0.12 + 0.1 * wobble
                } else {
                    99.7 + 0.1 * wobble
                }
            }),
            baseline_success_pct: Some(99.8 + 0.05 * wobble),
            canary_p99_ms: (!missing).then(|| {
                if failing {
                    180.0 + (i - 80) as f64 * 6.0 + 10.0 * wobble
                } else {
                    170.0 + 15.0 * wobble
                }
            }),
            baseline_p99_ms: Some(160.0 + 12.0 * wobble),
            canary_weight: weight,
        });
    }
    RolloutChart {
        service: "payments".into(),
        canary_version: "v2".into(),
        baseline_version: "v1".into(),
        subtitle: Some(
            "Rolled back at step 2 (25%): errors 95.2% vs 99.8% (margin 0.5 points)".into(),
        ),
        points,
        annotations: vec![
            Annotation {
                t_unix_ms: T0 + 60 * 5_000,
                kind: AnnotationKind::Step,
                label: "25%".into(),
            },
            Annotation {
                t_unix_ms: T0 + 119 * 5_000,
                kind: AnnotationKind::Rollback,
                label: "rollback: errors".into(),
            },
        ],
    }
}

fn decode(png_bytes: &[u8]) -> (u32, u32, Vec<u8>) {
    let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    let mut reader = decoder.read_info().expect("PNG header");
    let mut buf = vec![0; reader.output_buffer_size().expect("buffer size")];
    let info = reader.next_frame(&mut buf).expect("PNG frame");
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

fn parses(svg: &str) -> usvg::Tree {
    let options = usvg::Options {
        fontdb: font_database(),
        ..usvg::Options::default()
    };
    usvg::Tree::from_str(svg, &options).expect("the SVG parses")
}

#[test]
fn svg_parses_and_contains_both_series_in_both_panels() {
    let svg = render_svg(&example());
    let tree = parses(&svg);
    assert_eq!(tree.size().width(), WIDTH as f32);
    for id in [
        "canary-success",
        "baseline-success",
        "canary-latency",
        "baseline-latency",
    ] {
        assert!(tree.node_by_id(id).is_some(), "{id} missing from the SVG");
    }
    assert!(svg.contains(CANARY_COLOUR) && svg.contains(BASELINE_COLOUR));
    assert!(svg.contains("payments: v2 (canary) vs v1 (baseline)"));
    assert!(svg.contains("rollback: errors"));
    assert!(svg.contains("canary 5%") && svg.contains(">25%<"));
    assert!(svg.contains("Success rate (%)") && svg.contains("p99 latency (ms)"));
    // The gap at sample 3 splits the canary's line: two subpaths.
    let canary = svg
        .split(r#"<g id="canary-success">"#)
        .nth(1)
        .expect("canary group");
    let path = canary.split("</g>").next().expect("group end");
    assert_eq!(path.matches('M').count(), 2, "{path}");
}

#[test]
fn png_decodes_with_the_chart_size_and_writes_examples() {
    let chart = example();
    let svg = render_svg(&chart);
    let started = std::time::Instant::now();
    let png_bytes = render_png(&chart).expect("PNG");
    eprintln!("rendered PNG in {:?}", started.elapsed());
    let (w, h, pixels) = decode(&png_bytes);
    assert_eq!((w, h), (WIDTH, HEIGHT));
    // Something other than the white background was drawn, text included.
    assert!(
        pixels
            .chunks(4)
            .filter(|px| px[..3] != [255, 255, 255])
            .count()
            > 10_000
    );

    // For people: `target/chart-example.{svg,png}` at the workspace root.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    std::fs::create_dir_all(&dir).expect("target dir");
    std::fs::write(dir.join("chart-example.svg"), &svg).expect("write svg");
    std::fs::write(dir.join("chart-example.png"), &png_bytes).expect("write png");
}

#[test]
fn empty_single_and_degenerate_inputs_render() {
    let nan = ChartPoint {
        t_unix_ms: T0,
        canary_success_pct: Some(f64::NAN),
        baseline_success_pct: Some(f64::INFINITY),
        canary_p99_ms: Some(-0.0),
        baseline_p99_ms: None,
        canary_weight: 0,
    };
    let cases = [
        RolloutChart::default(),
        RolloutChart {
            points: vec![ChartPoint {
                t_unix_ms: T0,
                canary_success_pct: Some(100.0),
                baseline_success_pct: Some(100.0),
                canary_p99_ms: Some(12.0),
                baseline_p99_ms: Some(12.0),
                canary_weight: 5,
            }],
            ..RolloutChart::default()
        },
        RolloutChart {
            service: "<svc> & \"q\" \u{0}\u{7}".into(),
            subtitle: Some("x".repeat(10_000)),
            points: vec![nan.clone(), nan],
            annotations: vec![Annotation {
                t_unix_ms: 0,
                kind: AnnotationKind::Failure,
                label: "</text><script>".into(),
            }],
            ..RolloutChart::default()
        },
    ];
    for chart in &cases {
        let svg = render_svg(chart);
        parses(&svg);
        let (w, h, _) = decode(&render_png(chart).expect("PNG"));
        assert_eq!((w, h), (WIDTH, HEIGHT));
    }
    assert!(render_svg(&cases[0]).contains("no data yet"));
    // A lone sample is a dot, not an invisible zero-length line.
    assert!(render_svg(&cases[1]).contains("<circle"));
}

#[test]
fn long_series_are_downsampled() {
    let points: Vec<ChartPoint> = (0..10_000u64)
        .map(|i| ChartPoint {
            t_unix_ms: T0 + i * 100,
            canary_success_pct: Some(99.0),
            baseline_success_pct: Some(99.5),
            canary_p99_ms: Some(100.0 + (i % 7) as f64),
            baseline_p99_ms: Some(90.0),
            canary_weight: if i < 5_000 { 10 } else { 50 },
        })
        .collect();
    let prepared = prepare_points(&points);
    assert!(prepared.len() <= MAX_POINTS);
    let chart = RolloutChart {
        points,
        ..RolloutChart::default()
    };
    let svg = render_svg(&chart);
    assert!(svg.len() < 200_000, "SVG is {} bytes", svg.len());
    parses(&svg);
}

#[test]
fn ticks_are_nice() {
    assert_eq!(nice_step(10.0, 4.0), 2.0);
    assert_eq!(nice_step(1.0, 4.0), 0.2);
    assert_eq!(decimals(0.2), 1);
    assert_eq!(decimals(5.0), 0);
    let axis = Axis::success(&[99.2, 99.9]);
    assert!(
        axis.lo <= 99.2 && axis.hi <= 100.0 && axis.hi >= 99.9,
        "{axis:?}"
    );
    assert_eq!(escape("a<b & 'c'\u{1}"), "a&lt;b &amp; &#39;c&#39;");
}
