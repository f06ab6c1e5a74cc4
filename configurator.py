"""
nanoGPT's configurator, hardened (STYLE.md §2). Exec'd by every script after its config block:
    exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
    python train.py config/a1.py --batch_size=32 --out_dir=out-a1
A bare argument is a config file (plain Python, may `import` and read the defaults); `--key=value` overrides
one key. Unknown keys, in files or flags, and wrong types stop the script with a message naming them.
"""
import sys as _sys
import types as _types
from ast import literal_eval as _literal_eval

def _fail(msg):
    raise SystemExit(f"config error: {msg}")

def _check(key, val, where):
    if key not in config_keys:
        _fail(f"unknown config key {key!r} ({where}); known keys: {', '.join(sorted(config_keys))}")
    old = globals()[key]
    if old is None or val is None or type(val) == type(old):
        return val
    if type(old) == float and type(val) == int: # --learning_rate=1 means 1.0
        return float(val)
    if type(old) == str: # --wandb_run_name=123 stays a string
        return str(val)
    if type(old) in (list, tuple) and type(val) in (list, tuple):
        return type(old)(val)
    _fail(f"--{key} ({where}): expected {type(old).__name__}, got {type(val).__name__} ({val!r})")

for _arg in _sys.argv[1:]:
    if not _arg.startswith('--'): # a config file: run it against the current globals, then vet what it set
        _before = dict(globals())
        if int(__import__('os').environ.get('RANK', 0)) == 0:
            print(f"Overriding config with {_arg}:")
            print(open(_arg).read())
        try:
            exec(open(_arg).read(), globals())
        except FileNotFoundError:
            _fail(f"config file {_arg!r} not found")
        for _k, _v in list(globals().items()):
            if _k.startswith('_') or isinstance(_v, _types.ModuleType) or _k in _before and _before[_k] is _v:
                continue
            globals()[_k] = _check(_k, _v, _arg)
    else:
        _key, _sep, _val = _arg[2:].partition('=') # split at the first '=' only: --run_name=a=b works
        if not _sep:
            _fail(f"{_arg!r}: expected --key=value")
        try:
            _val = _literal_eval(_val)
        except (ValueError, SyntaxError):
            pass # a plain string such as --out_dir=out-a1
        if _key in config_keys and type(globals()[_key]) == bool and type(_val) != bool:
            _fail(f"--{_key}: expected bool, got {type(_val).__name__} ({_val!r}); write True or False")
        globals()[_key] = _check(_key, _val, 'command line')
