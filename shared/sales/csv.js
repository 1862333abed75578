/* The sales desk's preview of a CSV upload: the same file rules as the server (shared/bulk/parse.py) and the
 * field rules of POST /api/users (shared/creation/models.py), applied in the browser before anything is sent.
 *
 * It is a preview: the server validates again and its answer is what counts (its email check is stricter than
 * the pattern here). window.SalesCsv.check(arrayBuffer) ->
 *   {error: "file-level problem"} or
 *   {delimiter, rows: [{row, fields}], rejected: [{row, field, message}], duplicates: [{row, reason, first_row}],
 *    ready: count of rows that look valid}
 */
(function () {
  "use strict";

  var COLUMNS = ["email", "full_name", "phone", "product"];
  var REQUIRED = ["email", "full_name"];
  var DELIMITERS = [",", ";"];
  var MAX_ROWS = 5000;
  var MAX_BYTES = 2 * 1024 * 1024;
  var BINARY = /[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]/;
  var CONTROL = /[\x00-\x1f\x7f-\x9f\u2028\u2029]/;
  var PHONE = /^\+?[0-9][0-9 ().-]{3,30}$/;
  var EMAIL = /^[^\s@"(),:;<>[\\\]]+@[^\s@"(),:;<>[\\\]]+\.[^\s@"(),:;<>[\\\]]+$/;

  function chars(text) { return Array.from(text).length; }

  function decode(buffer) {
    var bytes = new Uint8Array(buffer);
    if (bytes.length > MAX_BYTES) { return { error: "the file is larger than 2 MiB: split it into smaller files" }; }
    if (bytes.length >= 2 && ((bytes[0] === 0xff && bytes[1] === 0xfe) || (bytes[0] === 0xfe && bytes[1] === 0xff))) {
      return { error: "the file is UTF-16; save it as CSV UTF-8" };
    }
    if (bytes.indexOf(0) !== -1) {
      return { error: "the file is binary (it holds NUL bytes), not a CSV or JSON text file" };
    }
    var text;
    try {
      text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);  // drops a BOM
    } catch (e) {
      return { error: "the file is not valid UTF-8: save it as CSV UTF-8; a file mixing encodings is refused" };
    }
    if (!text.trim()) { return { error: "the file is empty" }; }
    if (BINARY.test(text)) {
      return { error: "the file is binary (it holds control characters), not a CSV or JSON text file" };
    }
    return { text: text };
  }

  /* RFC 4180 records, as Python's csv module reads them with strict=True. `limit` stops after that many. */
  function records(text, delimiter, limit) {
    var out = [];
    var record = [];
    var cell = "";
    var i = 0;
    var n = text.length;
    var quoted = false;
    var started = false;  // the current record has content (a cell or a delimiter)
    var line = 1;
    while (i < n) {
      var c = text[i];
      if (quoted) {
        if (c === '"') {
          if (text[i + 1] === '"') { cell += '"'; i += 2; continue; }
          quoted = false;
          i += 1;
          var next = text[i];
          if (i < n && next !== delimiter && next !== "\r" && next !== "\n") {
            return { error: "the CSV cannot be read at line " + line + ": '" + delimiter +
                            "' expected after '\"'" };
          }
          continue;
        }
        if (c === "\n") { line += 1; }
        cell += c;
        i += 1;
        continue;
      }
      if (c === '"' && cell === "") { quoted = true; started = true; i += 1; continue; }
      if (c === delimiter) { record.push(cell); cell = ""; started = true; i += 1; continue; }
      if (c === "\r" || c === "\n") {
        if (started || cell !== "") { record.push(cell); }
        out.push(record);
        if (limit && out.length >= limit) { return { records: out }; }
        record = [];
        cell = "";
        started = false;
        i += (c === "\r" && text[i + 1] === "\n") ? 2 : 1;
        line += 1;
        continue;
      }
      cell += c;
      started = true;
      i += 1;
    }
    if (quoted) { return { error: "the CSV cannot be read at line " + line + ": unexpected end of data" }; }
    if (started || cell !== "") { record.push(cell); out.push(record); }
    return { records: out };
  }

  function header(text) {
    var tried = null;
    for (var d = 0; d < DELIMITERS.length; d += 1) {
      var first = records(text, DELIMITERS[d], 1);
      if (first.error) { continue; }
      var cells = first.records[0] || [];
      var names = cells.map(function (cell) { return cell.trim().replace(/^\ufeff/, "").toLowerCase(); });
      if (REQUIRED.every(function (name) { return names.indexOf(name) !== -1; })) {
        return { delimiter: DELIMITERS[d], names: names };
      }
      tried = tried || cells;
    }
    var shown = (tried || []).slice(0, 6).map(function (cell) { return cell.trim().slice(0, 40); }).join(", ");
    return { error: "no header: the first line must name the columns email,full_name[,phone,product] " +
                    "(comma or semicolon separated); it reads: " + (shown || "(nothing)") };
  }

  function normalise(email) {
    return email.normalize("NFKC").toLowerCase().normalize("NFKC").trim();
  }

  function fieldErrors(fields) {
    var errors = [];
    var email = (fields.email || "").trim();
    var name = (fields.full_name || "").trim();
    if (!email) {
      errors.push(["email", "an email address is required"]);
    } else if (CONTROL.test(email) || chars(email) > 254 || !EMAIL.test(email)) {
      errors.push(["email", "value is not a valid email address"]);
    }
    if (!name) {
      errors.push(["full_name", "a full name is required"]);
    } else if (CONTROL.test(name)) {
      errors.push(["full_name", "must not contain control characters or line breaks"]);
    } else if (chars(name) > 200) {
      errors.push(["full_name", "at most 200 characters"]);
    }
    if (fields.phone !== undefined && !PHONE.test(fields.phone.trim())) {
      errors.push(["phone", "a phone number: digits, spaces, ( ) . - and an optional leading +"]);
    }
    if (fields.product !== undefined && (CONTROL.test(fields.product) || chars(fields.product.trim()) > 100)) {
      errors.push(["product", "at most 100 characters, no control characters"]);
    }
    return errors;
  }

  function check(buffer) {
    var decoded = decode(buffer);
    if (decoded.error) { return decoded; }
    var head = header(decoded.text);
    if (head.error) { return head; }
    var unknown = head.names.filter(function (n) { return n && COLUMNS.indexOf(n) === -1; });
    if (unknown.length) {
      return { error: "unknown column(s): " + unknown.join(", ") + "; the columns are " + COLUMNS.join(", ") };
    }
    var twice = head.names.filter(function (n, i) { return n && head.names.indexOf(n) !== i; });
    if (twice.length) { return { error: "column(s) named twice: " + twice.join(", ") }; }
    var parsed = records(decoded.text, head.delimiter, 0);
    if (parsed.error) { return parsed; }
    var result = { delimiter: head.delimiter, rows: [], rejected: [], duplicates: [], ready: 0 };
    var firstRow = {};
    var data = parsed.records.slice(1);
    for (var r = 0; r < data.length; r += 1) {
      var record = data[r];
      if (!record.some(function (cell) { return cell.trim(); })) { continue; }
      if (result.rows.length >= MAX_ROWS) {
        return { error: "more than " + MAX_ROWS + " rows: at most " + MAX_ROWS + " per upload" };
      }
      var number = result.rows.length + 1;
      var fields = {};
      var problem = null;
      if (record.length > head.names.length &&
          record.slice(head.names.length).some(function (cell) { return cell.trim(); })) {
        problem = record.length + " cells, but the header names " + head.names.length + " columns";
      }
      for (var c = 0; c < head.names.length && c < record.length; c += 1) {
        var value = record[c].trim();
        if (!head.names[c]) {
          if (value && !problem) { problem = "a value in a column without a name"; }
          continue;
        }
        if (value || REQUIRED.indexOf(head.names[c]) !== -1) { fields[head.names[c]] = value; }
      }
      result.rows.push({ row: number, fields: fields });
      if (problem) {
        result.rejected.push({ row: number, field: "row", message: problem });
        continue;
      }
      var errors = fieldErrors(fields);
      if (errors.length) {
        errors.forEach(function (e) { result.rejected.push({ row: number, field: e[0], message: e[1] }); });
        continue;
      }
      var key = normalise(fields.email);
      if (firstRow[key]) {
        result.duplicates.push({ row: number, reason: "duplicate_in_upload", first_row: firstRow[key] });
        continue;
      }
      firstRow[key] = number;
      result.ready += 1;
    }
    if (!result.rows.length) { return { error: "the file has a header but no rows" }; }
    return result;
  }

  window.SalesCsv = { check: check, records: records, MAX_ROWS: MAX_ROWS };
}());
