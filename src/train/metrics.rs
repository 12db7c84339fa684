//! Training metrics: per-epoch records, log files, a progress display and
//! loss/accuracy plots.
//!
//! - [`EpochMetrics`] is one epoch's summary. `epoch` counts from 1 (it is the
//!   number of epochs finished, as in a checkpoint), accuracies are fractions
//!   in [0, 1], `lr` is the learning rate actually used.
//! - [`MetricsWriter`] appends one record per epoch to a `.csv` file (with a
//!   header line) or a `.jsonl` file (one JSON object per line), flushing after
//!   each so that a crash loses nothing and `tail -f` works; a resumed run
//!   appends to the same file. [`read_history`] reads either back.
//! - [`Progress`] shows a progress bar with the running loss, accuracy,
//!   samples/s and ETA when stderr is a terminal, and only one plain line per
//!   epoch otherwise (logs and CI stay readable).
//! - [`plot_curves`] draws loss and accuracy, train and test, to a PNG with
//!   `plotters`. Text uses DejaVu Sans Mono, embedded from `data/fonts/`
//!   (Bitstream Vera licence, which allows redistribution; see
//!   `data/fonts/LICENSE-DejaVu.txt`), so plots have labels on any machine
//!   without system fonts.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize};

/// One epoch's summary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// Epochs finished, counting this one (1 for the first).
    pub epoch: usize,
    /// Mean training loss over the epoch's samples.
    #[serde(deserialize_with = "nan_if_null")]
    pub train_loss: f32,
    /// Fraction of training samples classified correctly.
    #[serde(deserialize_with = "nan_if_null")]
    pub train_accuracy: f32,
    /// Mean test loss, if evaluated.
    pub test_loss: Option<f32>,
    /// Test accuracy, if evaluated.
    pub test_accuracy: Option<f32>,
    /// The learning rate used (base rate × schedule factor).
    #[serde(deserialize_with = "nan_if_null")]
    pub lr: f32,
    /// Wall-clock seconds for the epoch (training and evaluation).
    #[serde(deserialize_with = "nan_if_null")]
    pub seconds: f32,
    /// Training samples per second.
    #[serde(deserialize_with = "nan_if_null")]
    pub samples_per_second: f32,
}

/// JSON has no NaN: `serde_json` writes a non-finite f32 as `null`; read it
/// back as NaN (a diverged loss should still load).
fn nan_if_null<'de, D: Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
    Ok(Option::<f32>::deserialize(d)?.unwrap_or(f32::NAN))
}

/// Why metrics cannot be written, read or plotted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// A file operation failed.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file's name or contents are not what is expected.
    #[error("{}: {message}", .path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong and what was expected.
        message: String,
    },
    /// Drawing the plot failed.
    #[error("{}: cannot plot: {message}", .path.display())]
    Plot {
        /// The image file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// The two log formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricsFormat {
    /// Comma-separated values with a header line; an absent test value is an
    /// empty field.
    Csv,
    /// One JSON object per line; an absent test value is `null`.
    JsonLines,
}

impl MetricsFormat {
    /// The format for a file name: `.csv` or `.jsonl` (any case).
    ///
    /// # Errors
    ///
    /// [`MetricsError::Format`] for any other extension.
    pub fn of(path: &Path) -> Result<MetricsFormat, MetricsError> {
        match path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .as_deref()
        {
            Some("csv") => Ok(MetricsFormat::Csv),
            Some("jsonl") => Ok(MetricsFormat::JsonLines),
            _ => Err(MetricsError::Format {
                path: path.to_path_buf(),
                message: "a metrics file must end in .csv or .jsonl".to_string(),
            }),
        }
    }
}

/// The CSV header line.
pub const CSV_HEADER: &str =
    "epoch,train_loss,train_accuracy,test_loss,test_accuracy,lr,seconds,samples_per_second";

/// Appends [`EpochMetrics`] to a log file; see the [module docs](self).
#[derive(Debug)]
pub struct MetricsWriter {
    path: PathBuf,
    format: MetricsFormat,
    out: BufWriter<File>,
}

impl MetricsWriter {
    /// Opens `path` for appending, creating it if needed; the format follows
    /// the extension. A new or empty CSV file gets the header line.
    ///
    /// # Errors
    ///
    /// [`MetricsError::Format`] for another extension, or a CSV file whose
    /// first line is not [`CSV_HEADER`]; [`MetricsError::Io`] if it cannot be
    /// opened.
    pub fn open(path: &Path) -> Result<MetricsWriter, MetricsError> {
        let format = MetricsFormat::of(path)?;
        let io = |source| MetricsError::Io {
            path: path.to_path_buf(),
            source,
        };
        let existing = match std::fs::read_to_string(path) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io(e)),
        };
        if format == MetricsFormat::Csv
            && !existing.is_empty()
            && existing.lines().next() != Some(CSV_HEADER)
        {
            return Err(MetricsError::Format {
                path: path.to_path_buf(),
                message: format!(
                    "cannot append: the first line is not the metrics header '{CSV_HEADER}'"
                ),
            });
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        let mut out = BufWriter::new(file);
        if !existing.is_empty() && !existing.ends_with('\n') {
            // A line cut by a crash: start on a fresh line.
            out.write_all(b"\n").map_err(io)?;
        }
        if format == MetricsFormat::Csv && existing.is_empty() {
            writeln!(out, "{CSV_HEADER}").map_err(io)?;
            out.flush().map_err(io)?;
        }
        Ok(MetricsWriter {
            path: path.to_path_buf(),
            format,
            out,
        })
    }

    /// Appends one record and flushes it to the file.
    ///
    /// # Errors
    ///
    /// [`MetricsError::Io`] if the write fails.
    pub fn write(&mut self, m: &EpochMetrics) -> Result<(), MetricsError> {
        let line = match self.format {
            MetricsFormat::Csv => {
                let opt = |v: Option<f32>| v.map(|x| x.to_string()).unwrap_or_default();
                format!(
                    "{},{},{},{},{},{},{},{}",
                    m.epoch,
                    m.train_loss,
                    m.train_accuracy,
                    opt(m.test_loss),
                    opt(m.test_accuracy),
                    m.lr,
                    m.seconds,
                    m.samples_per_second
                )
            }
            MetricsFormat::JsonLines => {
                serde_json::to_string(m).map_err(|e| MetricsError::Format {
                    path: self.path.clone(),
                    message: e.to_string(),
                })?
            }
        };
        let io = |source| MetricsError::Io {
            path: self.path.clone(),
            source,
        };
        writeln!(self.out, "{line}").map_err(io)?;
        self.out.flush().map_err(io)
    }

    /// The file written to.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads a log written by [`MetricsWriter`] (format by extension), e.g. to
/// plot a resumed run's whole history. Blank lines are skipped.
///
/// # Errors
///
/// [`MetricsError::Io`] if unreadable; [`MetricsError::Format`] naming the
/// line for a record that does not parse.
pub fn read_history(path: &Path) -> Result<Vec<EpochMetrics>, MetricsError> {
    let format = MetricsFormat::of(path)?;
    let text = std::fs::read_to_string(path).map_err(|source| MetricsError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |line: usize, message: String| MetricsError::Format {
        path: path.to_path_buf(),
        message: format!("line {line}: {message}"),
    };
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let number = i + 1;
        if line.trim().is_empty() || (format == MetricsFormat::Csv && line == CSV_HEADER) {
            continue;
        }
        match format {
            MetricsFormat::JsonLines => out.push(
                serde_json::from_str(line)
                    .map_err(|e| bad(number, format!("not a metrics record: {e}")))?,
            ),
            MetricsFormat::Csv => {
                let f: Vec<&str> = line.split(',').map(str::trim).collect();
                if f.len() != 8 {
                    return Err(bad(
                        number,
                        format!("{} fields, expected 8 ({CSV_HEADER})", f.len()),
                    ));
                }
                let num = |k: usize| -> Result<f32, MetricsError> {
                    f[k].parse().map_err(|_| {
                        bad(
                            number,
                            format!("field {} is '{}', not a number", k + 1, f[k]),
                        )
                    })
                };
                let opt = |k: usize| -> Result<Option<f32>, MetricsError> {
                    if f[k].is_empty() {
                        Ok(None)
                    } else {
                        num(k).map(Some)
                    }
                };
                out.push(EpochMetrics {
                    epoch: f[0].parse().map_err(|_| {
                        bad(number, format!("epoch '{}' is not a whole number", f[0]))
                    })?,
                    train_loss: num(1)?,
                    train_accuracy: num(2)?,
                    test_loss: opt(3)?,
                    test_accuracy: opt(4)?,
                    lr: num(5)?,
                    seconds: num(6)?,
                    samples_per_second: num(7)?,
                });
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Progress display

/// How often the progress bar is redrawn at most.
const REDRAW: Duration = Duration::from_millis(100);

/// Width of the bar in characters.
const BAR: usize = 24;

/// A per-epoch progress display; see the [module docs](self).
///
/// Epochs are given to [`start_epoch`](Self::start_epoch) as 0-based indices,
/// like [`LrSchedule::factor`](super::schedule::LrSchedule::factor), and shown
/// counting from 1.
pub struct Progress {
    out: Box<dyn Write + Send>,
    tty: bool,
    epochs: usize,
    batches: usize,
    epoch: usize,
    done: usize,
    loss_sum: f64,
    correct: usize,
    seen: usize,
    start: Instant,
    last_draw: Option<Instant>,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress")
            .field("tty", &self.tty)
            .field("epoch", &self.epoch)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Progress {
    /// A display on stderr: a bar if stderr is a terminal, plain lines otherwise.
    pub fn new(epochs: usize, batches_per_epoch: usize) -> Progress {
        let tty = std::io::stderr().is_terminal();
        Progress::with_writer(Box::new(std::io::stderr()), tty, epochs, batches_per_epoch)
    }

    /// A display on any writer; `tty` chooses the bar or plain lines.
    pub fn with_writer(
        out: Box<dyn Write + Send>,
        tty: bool,
        epochs: usize,
        batches_per_epoch: usize,
    ) -> Progress {
        Progress {
            out,
            tty,
            epochs,
            batches: batches_per_epoch,
            epoch: 0,
            done: 0,
            loss_sum: 0.0,
            correct: 0,
            seen: 0,
            start: Instant::now(),
            last_draw: None,
        }
    }

    /// Starts epoch `epoch` (0-based) and its clock.
    pub fn start_epoch(&mut self, epoch: usize) {
        self.epoch = epoch;
        self.done = 0;
        self.loss_sum = 0.0;
        self.correct = 0;
        self.seen = 0;
        self.start = Instant::now();
        self.last_draw = None;
    }

    /// Records one batch: its mean loss, how many of its `count` samples were
    /// classified correctly.
    pub fn batch_done(&mut self, loss: f32, correct: usize, count: usize) {
        self.done += 1;
        self.loss_sum += loss as f64 * count as f64;
        self.correct += correct;
        self.seen += count;
        if !self.tty {
            return;
        }
        let now = Instant::now();
        let due = self.last_draw.is_none_or(|t| now - t >= REDRAW) || self.done >= self.batches;
        if due {
            self.last_draw = Some(now);
            let line = self.bar_line();
            // A failed write to stderr is not worth stopping training for.
            let _ = write!(self.out, "\r{line}\x1b[K");
            let _ = self.out.flush();
        }
    }

    /// Mean loss over the epoch's samples so far (NaN before any).
    pub fn epoch_loss(&self) -> f32 {
        (self.loss_sum / self.seen as f64) as f32
    }

    /// Accuracy over the epoch's samples so far (NaN before any).
    pub fn epoch_accuracy(&self) -> f32 {
        (self.correct as f64 / self.seen as f64) as f32
    }

    /// Samples seen in this epoch.
    pub fn epoch_samples(&self) -> usize {
        self.seen
    }

    /// Time since [`start_epoch`](Self::start_epoch).
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Prints a line of text without disturbing the bar (e.g. "checkpoint saved").
    pub fn note(&mut self, text: &str) {
        let clear = if self.tty { "\r\x1b[2K" } else { "" };
        let _ = writeln!(self.out, "{clear}{text}");
        let _ = self.out.flush();
    }

    /// Ends the epoch: replaces the bar (if any) with the epoch's summary line.
    pub fn finish_epoch(&mut self, m: &EpochMetrics) {
        let line = summary_line(m, self.epochs);
        self.note(&line);
    }

    fn bar_line(&self) -> String {
        let secs = self.start.elapsed().as_secs_f64();
        let fraction = if self.batches == 0 {
            1.0
        } else {
            (self.done as f64 / self.batches as f64).min(1.0)
        };
        let filled = (fraction * BAR as f64).round() as usize;
        let rate = self.seen as f64 / secs.max(1e-9);
        let eta = if self.done == 0 {
            0.0
        } else {
            secs / self.done as f64 * self.batches.saturating_sub(self.done) as f64
        };
        format!(
            "epoch {}/{} [{}{}] {}/{} loss {:.4} acc {:.2}% {:.0} samples/s ETA {}",
            self.epoch + 1,
            self.epochs,
            "#".repeat(filled),
            "-".repeat(BAR - filled),
            self.done,
            self.batches,
            self.epoch_loss(),
            100.0 * self.epoch_accuracy(),
            rate,
            clock(eta)
        )
    }
}

/// `m:ss` or `h:mm:ss`.
fn clock(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

/// The one line an epoch leaves behind.
pub fn summary_line(m: &EpochMetrics, epochs: usize) -> String {
    let mut s = format!(
        "epoch {}/{epochs}  loss {:.4}  acc {:.2}%",
        m.epoch,
        m.train_loss,
        100.0 * m.train_accuracy
    );
    if let Some(l) = m.test_loss {
        s += &format!("  test loss {l:.4}");
    }
    if let Some(a) = m.test_accuracy {
        s += &format!("  test acc {:.2}%", 100.0 * a);
    }
    s += &format!(
        "  lr {:.3e}  {:.1} s  {:.0} samples/s",
        m.lr, m.seconds, m.samples_per_second
    );
    s
}

// ---------------------------------------------------------------------------
// Plots

/// DejaVu Sans Mono (Bitstream Vera licence, `data/fonts/LICENSE-DejaVu.txt`).
pub(crate) const FONT: &[u8] = include_bytes!("../../data/fonts/DejaVuSansMono.ttf");

/// The family name the font is registered under.
pub(crate) const FAMILY: &str = "onebit-sans";

/// Draws the loss (left) and accuracy (right) curves of `history`, train and
/// (where present) test, against the epoch, to a PNG file.
///
/// # Errors
///
/// [`MetricsError::Format`] if `path` does not end in `.png` or `history` is
/// empty; [`MetricsError::Plot`] if drawing or writing the image fails.
pub fn plot_curves(path: &Path, history: &[EpochMetrics]) -> Result<(), MetricsError> {
    use plotters::prelude::*;

    let is_png = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    if !is_png {
        return Err(MetricsError::Format {
            path: path.to_path_buf(),
            message: "a plot file must end in .png".to_string(),
        });
    }
    if history.is_empty() {
        return Err(MetricsError::Format {
            path: path.to_path_buf(),
            message: "no epochs to plot".to_string(),
        });
    }
    static FONT_OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let font_ok = *FONT_OK
        .get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if !font_ok {
        return Err(MetricsError::Plot {
            path: path.to_path_buf(),
            message: "the embedded font does not load".to_string(),
        });
    }
    let plot = |message: String| MetricsError::Plot {
        path: path.to_path_buf(),
        message,
    };
    let root = BitMapBackend::new(path, (1200, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot(e.to_string()))?;
    let (left, right) = root.split_horizontally(600);

    let first = history.iter().map(|m| m.epoch).min().unwrap_or(0) as f64;
    let last = history.iter().map(|m| m.epoch).max().unwrap_or(0) as f64;
    let x_range = if last > first {
        first..last
    } else {
        first - 0.5..first + 0.5
    };
    let finite = |v: f32| v.is_finite().then_some(v as f64);
    let series = |f: &dyn Fn(&EpochMetrics) -> Option<f32>| -> Vec<(f64, f64)> {
        history
            .iter()
            .filter_map(|m| Some((m.epoch as f64, finite(f(m)?)?)))
            .collect()
    };
    let train_color = RGBColor(31, 119, 180);
    let test_color = RGBColor(214, 39, 40);
    let panels = [
        (
            &left,
            "loss",
            series(&|m| Some(m.train_loss)),
            series(&|m| m.test_loss),
        ),
        (
            &right,
            "accuracy (%)",
            series(&|m| Some(100.0 * m.train_accuracy)),
            series(&|m| m.test_accuracy.map(|a| 100.0 * a)),
        ),
    ];
    for (area, name, train, test) in panels {
        let y_max = train
            .iter()
            .chain(&test)
            .map(|p| p.1)
            .fold(0.0f64, f64::max);
        let y_range = if name == "loss" {
            0.0..(y_max * 1.05).max(1e-6)
        } else {
            0.0..100.0
        };
        let mut chart = ChartBuilder::on(area)
            .caption(name, (FAMILY, 22))
            .margin(12)
            .margin_right(28)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x_range.clone(), y_range)
            .map_err(|e| plot(e.to_string()))?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            // Epochs are whole numbers; ticks between them would repeat labels.
            .x_labels(((x_range.end - x_range.start).round() as usize + 1).min(12))
            .x_label_formatter(&|x| format!("{x:.0}"))
            .label_style((FAMILY, 14))
            .axis_desc_style((FAMILY, 16))
            .draw()
            .map_err(|e| plot(e.to_string()))?;
        for (points, label, color) in [(train, "train", train_color), (test, "test", test_color)] {
            if points.is_empty() {
                continue;
            }
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                .map_err(|e| plot(e.to_string()))?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart
                .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(|e| plot(e.to_string()))?;
        }
        chart
            .configure_series_labels()
            .label_font((FAMILY, 14))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(if name == "loss" {
                SeriesLabelPosition::UpperRight
            } else {
                SeriesLabelPosition::LowerRight
            })
            .draw()
            .map_err(|e| plot(e.to_string()))?;
    }
    root.present().map_err(|e| plot(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("onebit-metrics-{tag}-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn history() -> Vec<EpochMetrics> {
        (1..=12)
            .map(|e| {
                let t = e as f32;
                EpochMetrics {
                    epoch: e,
                    train_loss: 2.3 / t,
                    train_accuracy: 1.0 - 0.9 / t,
                    test_loss: (e % 3 != 0).then_some(2.4 / t + 0.05),
                    test_accuracy: (e % 3 != 0).then_some(0.97 - 0.9 / t),
                    lr: 1e-3 * 0.9f32.powi(e as i32),
                    seconds: 1.5,
                    samples_per_second: 1000.0 + t,
                }
            })
            .collect()
    }

    #[test]
    fn csv_and_jsonl_append_and_read_back() {
        let dir = temp_dir("log");
        let h = history();
        for name in ["m.csv", "m.jsonl"] {
            let p = dir.join(name);
            let mut w = MetricsWriter::open(&p).unwrap();
            for m in &h[..5] {
                w.write(m).unwrap();
            }
            drop(w);
            // A resumed run appends (no second header).
            let mut w = MetricsWriter::open(&p).unwrap();
            for m in &h[5..] {
                w.write(m).unwrap();
            }
            assert_eq!(read_history(&p).unwrap(), h, "{name}");
        }
        let csv = std::fs::read_to_string(dir.join("m.csv")).unwrap();
        assert_eq!(csv.lines().next(), Some(CSV_HEADER));
        assert_eq!(csv.matches("epoch,").count(), 1);
        assert!(
            csv.lines().nth(3).unwrap().starts_with("3,0.76666"),
            "{csv}"
        );
        assert!(
            csv.lines().nth(3).unwrap().contains(",,"),
            "absent test values are empty"
        );
        let jsonl = std::fs::read_to_string(dir.join("m.jsonl")).unwrap();
        assert!(
            jsonl.lines().nth(2).unwrap().contains("\"test_loss\":null"),
            "{jsonl}"
        );
        // Flushed after every record: visible before the writer is dropped.
        let p = dir.join("live.csv");
        let mut w = MetricsWriter::open(&p).unwrap();
        w.write(&h[0]).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap().lines().count(), 2);
        // A diverged loss survives JSON.
        let p = dir.join("nan.jsonl");
        let mut w = MetricsWriter::open(&p).unwrap();
        let mut m = h[0].clone();
        m.train_loss = f32::NAN;
        w.write(&m).unwrap();
        assert!(read_history(&p).unwrap()[0].train_loss.is_nan());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn bad_metrics_files_are_named() {
        let dir = temp_dir("bad");
        let err = MetricsWriter::open(&dir.join("m.txt"))
            .unwrap_err()
            .to_string();
        assert!(
            err.ends_with("m.txt: a metrics file must end in .csv or .jsonl"),
            "{err}"
        );
        let p = dir.join("other.csv");
        std::fs::write(&p, "a,b\n1,2\n").unwrap();
        let err = MetricsWriter::open(&p).unwrap_err().to_string();
        assert!(err.contains("other.csv: cannot append"), "{err}");
        std::fs::write(&p, format!("{CSV_HEADER}\n1,2,3\n")).unwrap();
        let err = read_history(&p).unwrap_err().to_string();
        assert!(
            err.contains("other.csv: line 2: 3 fields, expected 8"),
            "{err}"
        );
        std::fs::write(&p, format!("{CSV_HEADER}\n1,x,1,,,1,1,1\n")).unwrap();
        let err = read_history(&p).unwrap_err().to_string();
        assert!(
            err.contains("line 2: field 2 is 'x', not a number"),
            "{err}"
        );
        let p = dir.join("bad.jsonl");
        std::fs::write(&p, "{\"epoch\": 1}\n").unwrap();
        let err = read_history(&p).unwrap_err().to_string();
        assert!(
            err.contains("bad.jsonl: line 1: not a metrics record"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn progress_plain_and_bar() {
        let m = &history()[1];
        let buf = Shared::default();
        let mut p = Progress::with_writer(Box::new(buf.clone()), false, 12, 3);
        p.start_epoch(1);
        p.batch_done(1.0, 3, 4);
        p.batch_done(2.0, 1, 4);
        assert_eq!(p.epoch_loss(), 1.5);
        assert_eq!(p.epoch_accuracy(), 0.5);
        assert_eq!(p.epoch_samples(), 8);
        p.finish_epoch(m);
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text,
            "epoch 2/12  loss 1.1500  acc 55.00%  test loss 1.2500  test acc 52.00%  \
             lr 8.100e-4  1.5 s  1002 samples/s\n"
        );
        let buf = Shared::default();
        let mut p = Progress::with_writer(Box::new(buf.clone()), true, 12, 3);
        p.start_epoch(0);
        p.batch_done(0.5, 2, 4);
        p.batch_done(0.5, 2, 4);
        p.batch_done(0.5, 2, 4); // the last batch is always drawn
        p.finish_epoch(m);
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(
            text.starts_with("\repoch 1/12 [########----------------] 1/3 loss 0.5000 acc 50.00%"),
            "{text:?}"
        );
        assert!(
            text.contains("\repoch 1/12 [########################] 3/3 loss 0.5000"),
            "{text:?}"
        );
        assert!(text.contains("ETA 0:00"), "{text:?}");
        assert!(text.ends_with("\r\x1b[2Kepoch 2/12  loss 1.1500  acc 55.00%  test loss 1.2500  test acc 52.00%  lr 8.100e-4  1.5 s  1002 samples/s\n"), "{text:?}");
        assert_eq!(clock(3725.0), "1:02:05");
        assert_eq!(clock(65.4), "1:05");
    }

    #[test]
    fn plots_to_png() {
        let dir = temp_dir("plot");
        let p = dir.join("curves.png");
        plot_curves(&p, &history()).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"));
        // Kept for looking at: ONEBIT_KEEP_PLOT=path copies it.
        if let Ok(keep) = std::env::var("ONEBIT_KEEP_PLOT") {
            std::fs::copy(&p, keep).unwrap();
        }
        // One epoch, and a NaN, still plot.
        let mut one = history()[..1].to_vec();
        one[0].test_loss = Some(f32::NAN);
        plot_curves(&p, &one).unwrap();
        let err = plot_curves(&dir.join("c.jpg"), &history())
            .unwrap_err()
            .to_string();
        assert!(err.contains("must end in .png"), "{err}");
        assert!(
            plot_curves(&p, &[])
                .unwrap_err()
                .to_string()
                .contains("no epochs")
        );
        let err = plot_curves(&dir.join("no/such/dir.png"), &history())
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot plot"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
