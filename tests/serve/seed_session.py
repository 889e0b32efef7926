"""The seed: a real user's apstools session (ad-custom-hdf5-filename.txt), run unchanged.

The code is taken at run time from the copied document: its indented blocks, in order, up
to the punx section, those that parse as Python (the other two indented blocks are quoted
prose). They run as notebook cells in one namespace; a cell ending in an expression shows
its value, as Jupyter would. Then this script checks what the session left behind, and runs
a second `bp.count` to see the next file number written and the first file untouched, then
apstools' own priming (AD_prime_plugin2), forced as on a freshly started IOC.

Usage: seed_session.py SEED_DOCUMENT      (prints SEED SESSION OK at the end)
"""
import ast
import datetime
import hashlib
import os
import pathlib
import sys
import textwrap

EXPECTED_CELLS = 7  # code cells before the punx section in the seed
EXPECTED_PROSE = 2  # indented quotes that are not code


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print(f"CHECK {what}", flush=True)


def indented_blocks(text):
    """Blocks of lines indented by 3 or more spaces that follow a blank line, up to the
    punx section."""
    lines = text.splitlines()
    blocks, block, prev_blank = [], None, True
    for i, line in enumerate(lines):
        if line.strip() == "punx" and i + 1 < len(lines) and lines[i + 1].startswith("===="):
            break
        blank = not line.strip()
        indented = line.startswith("   ") and not blank
        if block is not None:
            if blank or indented:
                block.append(line)
            else:
                blocks.append(block)
                block = None
        elif indented and prev_blank:
            block = [line]
        prev_blank = blank
    if block is not None:
        blocks.append(block)
    return [textwrap.dedent("\n".join(b)).strip("\n") + "\n" for b in blocks]


def split_cells(text):
    cells, prose = [], []
    for block in indented_blocks(text):
        try:
            ast.parse(block)
            cells.append(block)
        except SyntaxError:
            prose.append(block)
    return cells, prose


def run_cell(source, ns, number):
    """Execute like a notebook cell: a trailing expression's value is shown."""
    tree = ast.parse(source)
    last = tree.body[-1] if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    if last is not None:
        tree.body.pop()
    exec(compile(tree, f"<seed cell {number}>", "exec"), ns)
    if last is not None:
        value = eval(compile(ast.Expression(last.value), f"<seed cell {number}>", "eval"), ns)
        if value is not None:
            print(repr(value))


def file_facts(path):
    import h5py
    st = os.stat(path)
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    with h5py.File(path, "r") as f:
        frames = f["/entry/data/data"].shape[0]
    return {"sha256": digest, "mtime_ns": st.st_mtime_ns, "size": st.st_size, "frames": frames}


def check_nexus(path, shape, dtype):
    import h5py
    with h5py.File(path, "r") as f:
        entry, data = f["/entry"], f["/entry/data"]
        check(_s(entry.attrs.get("NX_class")) == "NXentry", "/entry is an NXentry")
        check(_s(data.attrs.get("NX_class")) == "NXdata", "/entry/data is an NXdata")
        check("/entry/data/data" in f, "/entry/data/data exists")
        dset = f["/entry/data/data"]
        signal = _s(data.attrs.get("signal")) if "signal" in data.attrs else None
        check(signal == "data" or int(dset.attrs.get("signal", 0)) == 1,
              f"NXdata names its signal (group @signal={signal!r}, "
              f"dataset @signal={dset.attrs.get('signal')!r})")
        check(dset.shape == shape, f"/entry/data/data shape {dset.shape} == {shape}")
        check(dset.dtype == dtype, f"/entry/data/data dtype {dset.dtype} == {dtype}")
        frames = dset[...]
        check(frames.any(), "frames hold data (not all zero)")
        return frames


def _s(v):
    return v.decode() if isinstance(v, bytes) else (None if v is None else str(v))


def main():
    seed_path = sys.argv[1]
    started = datetime.date.today()
    with open(seed_path, encoding="utf-8") as f:
        cells, prose = split_cells(f.read())
    check(len(cells) == EXPECTED_CELLS and len(prose) == EXPECTED_PROSE,
          f"seed has {len(cells)} code cells and {len(prose)} prose quotes before punx")

    ns = {"__name__": "__main__"}
    for number, source in enumerate(cells, 1):
        print(f"----- seed cell {number}/{len(cells)} -----")
        print(textwrap.indent(source, ">>> ", lambda _: True), end="")
        print("-----", flush=True)
        run_cell(source, ns, number)
        sys.stdout.flush()
    print("----- end of the seed session -----", flush=True)

    # What the session left behind.
    import bluesky.plans as bp
    import numpy as np

    det, cat, RE = ns["adsimdet"], ns["cat"], ns["RE"]
    n = ns["NUM_FRAMES"]
    check(det.hdf1.num_captured.get() == n, f"HDF1:NumCaptured_RBV == {n}")
    local, fname = ns["local_file_name"], ns["fname"]
    check(local == fname, f"local file name {local} == databroker resource file {fname}")
    check(local.exists(), f"{local} exists")
    days = {started, datetime.date.today()}  # the session may run over midnight
    write_dirs = {pathlib.Path(d.strftime("/tmp/adsimdet/%Y/%m/%d")) for d in days}
    written = pathlib.Path(det.hdf1.full_file_name.get())
    check(written.parent in write_dirs, f"FullFileName_RBV {written} is in {write_dirs}")
    check(written.resolve() == local.resolve(), "FullFileName_RBV is the file read back")
    run = cat.v2[ns["uids"][0]]
    image = run.primary.read()["adsimdet_image"]
    check(image.shape == (1, n, 1024, 1024), f"databroker image shape {image.shape}")
    dtype = np.dtype(det.cam.data_type.get(as_string=True).lower())
    frames = check_nexus(local, (n, 1024, 1024), dtype)
    check(np.array_equal(np.asarray(image[0]), frames), "databroker frames == h5py frames")

    # A second count: the next file number; the first file stays as it was.
    first = file_facts(local)
    number = det.hdf1.file_number.get()
    today = datetime.date.today()
    (uid2,) = RE(bp.count([det]))
    res2 = cat.v2[uid2].primary._resources[0]
    second = pathlib.Path(f"{res2['root']}{res2['resource_path']}")
    template = det.hdf1.file_template.get()
    read_dir = today.strftime(det.hdf1.read_path_template)
    expected = pathlib.Path(template % (read_dir, det.hdf1.file_name.get(), number))
    check(second == expected, f"second count's resource {second} == {expected}")
    check(second != local and second.exists(), f"second file {second.name} was written")
    check(det.hdf1.file_number.get() == number + 1, f"FileNumber advanced to {number + 1}")
    check(cat.v2[uid2].primary.read()["adsimdet_image"].shape == (1, n, 1024, 1024),
          "second run reads back (1, 5, 1024, 1024)")
    check_nexus(second, (n, 1024, 1024), dtype)
    check(file_facts(local) == first,
          f"first file {local.name} unchanged (bytes, mtime, {first['frames']} frames)")

    # Priming as apstools does it on a freshly started IOC. The daemon starts primed, so
    # ensure_AD_plugin_primed skipped it above: force apstools' own priming path here and
    # check that it runs through against the daemon and puts the cam back as it was.
    import apstools.devices.area_detector_support as ads
    names = ("acquire_time", "acquire_period", "image_mode", "trigger_mode", "array_callbacks")
    before = {k: getattr(det.cam, k).get() for k in names}
    counter = det.cam.array_counter.get()
    primed = ads.AD_plugin_primed
    ads.AD_plugin_primed = lambda plugin: False
    try:
        ads.AD_prime_plugin2(det.hdf1)
    finally:
        ads.AD_plugin_primed = primed
    check(det.cam.array_counter.get() > counter, "apstools' priming acquired a frame")
    check(primed(det.hdf1), "the plugin reads primed after apstools' priming")
    after = {k: getattr(det.cam, k).get() for k in names}
    check(after == before, f"apstools' priming restored the cam ({after})")
    print("SEED SESSION OK", flush=True)


if __name__ == "__main__":
    main()
