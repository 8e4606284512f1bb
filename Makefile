# Two commands do all the set-up (see README):
#   make demo   install, prepare the embedded Shakespeare corpus, train a small oscillating
#               model on the CPU (a few minutes), then print a sample
#   make test   install, then run the test suite (what CI runs)
PYTHON ?= python3
DEMO_OUT ?= out-shakespeare-bio

.PHONY: install demo test bench

install:
	$(PYTHON) -m pip install -q -r requirements.txt

demo: install
	$(PYTHON) train_bio.py config/shakespeare_bio.py --out_dir=$(DEMO_OUT) --overwrite=True
	$(PYTHON) sample_bio.py --out_dir=$(DEMO_OUT) --start="ROMEO:" --max_new_tokens=200 --seed=1337

test: install
	$(PYTHON) -m pytest -q tests

bench: install
	$(PYTHON) bench_bio.py --quick
