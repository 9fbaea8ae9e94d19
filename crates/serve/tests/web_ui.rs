//! The status and try-it page (`GET /`): served, guarded and switched off as documented, and used in a
//! real browser: headless Chromium (Debian's `chromium` package; `.ci/run` installs it) loads the page,
//! uploads a fixture image through its form and must show the runtime's own label, with no console
//! error. Without Chromium the browser tests say so on stderr and pass, so a machine that cannot
//! install it still runs the rest.

mod support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption;
use headless_chrome::protocol::cdp::types::Event;
use headless_chrome::{Browser, LaunchOptions, Tab};
use serve::{ModelConfig, VersionState};
use support::{TestResult, TestServer};

/// The image the form uploads: a blue triangle, a class the fixture model was trained on.
const IMAGE: &str = "shape-blue-triangle.jpg";

/// How long the page may take to show a prediction (the first one compiles nothing, but CI is slow).
const RESULT_WAIT: Duration = Duration::from_secs(60);

/// Where Debian and other distributions put Chromium; `KILN_CHROMIUM` overrides.
fn chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("KILN_CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"]
        .into_iter()
        .map(PathBuf::from)
        .find(|path| path.is_file())
}

/// The workspace's `target/`, where screenshots go and the check report is written.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"))
}

/// `target/screenshots/<name>`, made if missing.
fn screenshot_path(name: &str) -> TestResult<PathBuf> {
    let dir = target_dir().join("screenshots");
    std::fs::create_dir_all(&dir)?;
    Ok(dir.join(name))
}

/// A headless Chromium with the flags that work in CI containers, a fresh profile and console capture.
struct Chromium {
    browser: Browser,
    /// Console errors, uncaught exceptions and failed loads the page reported.
    errors: Arc<Mutex<Vec<String>>>,
    _profile: tempfile::TempDir,
}

impl Chromium {
    fn launch(executable: &Path) -> TestResult<Chromium> {
        let profile = tempfile::tempdir()?;
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ]
        .map(std::ffi::OsStr::new);
        let options = LaunchOptions {
            path: Some(executable.to_owned()),
            headless: true,
            sandbox: false,
            window_size: Some((1280, 900)),
            user_data_dir: Some(profile.path().to_owned()),
            args: args.to_vec(),
            idle_browser_timeout: Duration::from_secs(120),
            ..LaunchOptions::default()
        };
        let browser =
            Browser::new(options).map_err(|e| format!("cannot start {}: {e:#}", executable.display()))?;
        Ok(Chromium { browser, errors: Arc::default(), _profile: profile })
    }

    /// A tab at `url` whose console errors land in `self.errors`.
    fn open(&self, url: &str) -> TestResult<Arc<Tab>> {
        let tab = self.browser.new_tab()?;
        tab.enable_log()?.enable_runtime()?;
        let errors = self.errors.clone();
        tab.add_event_listener(Arc::new(move |event: &Event| {
            let error = match event {
                Event::RuntimeExceptionThrown(thrown) => {
                    Some(format!("{:?}", thrown.params.exception_details))
                }
                Event::RuntimeConsoleAPICalled(call) if format!("{:?}", call.params.Type) == "Error" => {
                    Some(format!("console.error {:?}", call.params.args))
                }
                Event::LogEntryAdded(entry) if format!("{:?}", entry.params.entry.level) == "Error" => {
                    Some(format!(
                        "{}: {}",
                        entry.params.entry.url.as_deref().unwrap_or("-"),
                        entry.params.entry.text
                    ))
                }
                _ => None,
            };
            if let Some(error) = error {
                errors.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(error);
            }
        }))?;
        tab.set_default_timeout(RESULT_WAIT);
        tab.navigate_to(url)?.wait_until_navigated()?;
        Ok(tab)
    }

    fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

/// Evaluates `expression` in the page and returns its value as JSON.
fn evaluate(tab: &Tab, expression: &str) -> TestResult<serde_json::Value> {
    Ok(tab.evaluate(expression, false)?.value.unwrap_or(serde_json::Value::Null))
}

/// Polls `expression` until it is `true`.
fn wait_until(tab: &Tab, expression: &str, what: &str) -> TestResult {
    let started = Instant::now();
    while started.elapsed() < RESULT_WAIT {
        if evaluate(tab, expression)? == serde_json::Value::Bool(true) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("the page did not get to {what} within {} s", RESULT_WAIT.as_secs()).into())
}

/// What the try-it form showed.
#[derive(Debug)]
struct Shown {
    label: String,
    confidence: String,
}

/// Loads the page at `url`, waits for `model` in its model list, uploads `image` through the file input
/// (DOM.setFileInputFiles, as a user picking a file) and reads the label and confidence it shows.
fn try_it(tab: &Tab, model: &str, image: &Path) -> TestResult<Shown> {
    let model_json = serde_json::to_string(model)?;
    wait_until(tab, &format!("document.getElementById('model').value === {model_json}"), "list the model")?;
    let input = tab.find_element("#image")?;
    // Chromium reads the file by the exact path it is given and refuses one with `..` in it.
    let image = std::fs::canonicalize(image)?;
    input.set_input_files(&[image.to_str().ok_or("image path is not UTF-8")?])?;
    wait_until(
        tab,
        "document.getElementById('result').dataset.done === '1' || !document.getElementById('result-error').hidden",
        "show a prediction",
    )?;
    let error = evaluate(
        tab,
        "document.getElementById('result-error').hidden ? '' : document.getElementById('result-error').textContent",
    )?;
    if error != "" {
        return Err(format!("the page showed an error: {error}").into());
    }
    let text = |id: &str| -> TestResult<String> {
        match evaluate(tab, &format!("document.getElementById('{id}').textContent"))? {
            serde_json::Value::String(text) => Ok(text),
            other => Err(format!("#{id} has no text: {other}").into()),
        }
    };
    Ok(Shown { label: text("label")?, confidence: text("confidence")? })
}

/// Runs `browse` with a fresh browser on a blocking thread, or skips (returning `None`) without Chromium.
async fn with_chromium<T: Send + 'static>(
    browse: impl FnOnce(&Chromium) -> TestResult<T> + Send + 'static,
) -> TestResult<Option<T>> {
    let Some(executable) = chromium() else {
        eprintln!(
            "SKIPPED: no Chromium at /usr/bin/chromium (install Debian's `chromium` package, as .ci/run does, or \
             set KILN_CHROMIUM): the web page was not tested in a browser"
        );
        return Ok(None);
    };
    tokio::task::spawn_blocking(move || browse(&Chromium::launch(&executable)?)).await?.map(Some)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_shows_the_runtimes_label_for_an_uploaded_image() -> TestResult {
    let started = Instant::now();
    let fixture = support::serve_fixture(1, |_| {}).await?;
    let image = support::fixtures().join("images").join(IMAGE);
    let expected = support::reference(&fixture.dir, &std::fs::read(&image)?)?;
    let url = format!("{}/", fixture.server.rest);
    let screenshot = screenshot_path("try-it.png")?;
    let browsed = with_chromium(move |chromium| {
        let tab = chromium.open(&url)?;
        let shown = try_it(&tab, "vit", &image)?;
        // The status panel re-polls after a prediction; let it show the request before the picture.
        wait_until(
            &tab,
            "document.getElementById('models').textContent.includes('AVAILABLE')",
            "show the version",
        )?;
        std::fs::write(
            &screenshot,
            tab.capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true)?,
        )?;
        Ok((shown, chromium.errors()))
    })
    .await?;
    let Some((shown, errors)) = browsed else { return Ok(()) };
    assert_eq!(shown.label, expected.label);
    let confidence: f32 = shown.confidence.parse()?;
    assert!((confidence - expected.confidence).abs() <= 5e-4, "{shown:?} vs {}", expected.confidence);
    assert!(errors.is_empty(), "console errors: {errors:#?}");
    eprintln!(
        "browser test took {:.1} s; screenshot {}",
        started.elapsed().as_secs_f64(),
        screenshot_path("try-it.png")?.display()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_label_with_markup_is_shown_as_text() -> TestResult {
    // The fixture checkpoint with every class name turned into markup: a label is UTF-8 from a
    // checkpoint, so a hostile or careless one must reach the page as text.
    let checkpoint = tempfile::tempdir()?;
    let source = support::fixtures().join("models/tiny-vit");
    for entry in std::fs::read_dir(&source)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), checkpoint.path().join(entry.file_name()))?;
        }
    }
    let config_path = checkpoint.path().join("config.json");
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(&config_path)?)?;
    let mut label2id = serde_json::Map::new();
    for (id, label) in config["id2label"].as_object_mut().ok_or("config.json has no id2label")? {
        let marked =
            format!("<script>window.kilnInjected = true</script><b>{}</b>", label.as_str().unwrap_or(""));
        label2id.insert(marked.clone(), serde_json::Value::from(id.parse::<u64>()?));
        *label = serde_json::Value::String(marked);
    }
    config["label2id"] = serde_json::Value::Object(label2id);
    std::fs::write(&config_path, serde_json::to_vec_pretty(&config)?)?;
    let base = tempfile::tempdir()?;
    let request = export::ExportRequest {
        checkpoint: checkpoint.path().to_owned(),
        base: base.path().to_owned(),
        version: Some(1),
        resize: artifact::ResizeMode::Pil,
        jpeg_draft: false,
        precision: export::Precision::F32,
        accuracy_images: vec![],
        min_top1_agreement: export::MIN_TOP1_AGREEMENT,
    };
    let dir = export::export(&request, &runtime::NoProgress)?.version_dir;
    let server = TestServer::start(support::options(vec![ModelConfig::new("marked", base.path())])).await?;
    server.wait_for("marked", 1, VersionState::Available).await?;
    let image = support::fixtures().join("images").join(IMAGE);
    let expected = support::reference(&dir, &std::fs::read(&image)?)?;
    assert!(expected.label.starts_with("<script>"), "{}", expected.label);
    let url = format!("{}/", server.rest);
    let browsed = with_chromium(move |chromium| {
        let tab = chromium.open(&url)?;
        let shown = try_it(&tab, "marked", &image)?;
        let injected = evaluate(&tab, "window.kilnInjected === true || document.querySelectorAll('#label *, #models script').length > 0")?;
        Ok((shown, injected, chromium.errors()))
    })
    .await?;
    let Some((shown, injected, errors)) = browsed else { return Ok(()) };
    assert_eq!(shown.label, expected.label);
    assert_eq!(injected, serde_json::Value::Bool(false), "the label's markup became elements or ran");
    assert!(errors.is_empty(), "console errors: {errors:#?}");
    Ok(())
}

#[tokio::test]
async fn the_page_is_open_its_data_needs_the_token_and_the_flag_removes_both() -> TestResult {
    let token = "web-ui-test-token-0123456789";
    let tokens = tempfile::NamedTempFile::new()?;
    std::fs::write(tokens.path(), token)?;
    let token_file = tokens.path().to_owned();
    let fixture = support::serve_fixture(1, |options| options.auth_token_file = Some(token_file)).await?;
    let http = &fixture.server.http;
    let rest = &fixture.server.rest;
    let page = http.get(format!("{rest}/")).send().await?;
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    assert!(page.text().await?.contains("id=\"image\""));
    assert_eq!(http.get(format!("{rest}/web/status")).send().await?.status(), 401);
    let status: serde_json::Value =
        http.get(format!("{rest}/web/status")).bearer_auth(token).send().await?.json().await?;
    let model = &status["models"][0];
    assert_eq!(model["name"], "vit");
    assert_eq!(model["serving_version"], "1");
    assert_eq!(model["versions"][0]["state"], "AVAILABLE");
    assert_eq!(model["signature_def"]["serving_default"]["inputs"]["string_input"]["dtype"], "DT_STRING");

    let off = support::serve_fixture(1, |options| options.web_ui = false).await?;
    assert_eq!(off.server.http.get(format!("{}/", off.server.rest)).send().await?.status(), 404);
    assert_eq!(off.server.http.get(format!("{}/web/status", off.server.rest)).send().await?.status(), 404);
    Ok(())
}
