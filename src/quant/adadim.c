/* AdaDim: per layer, quantize both along the inputs (per-OC or groups of g
 * inputs in a row) and along the outputs (per-IC or groups of g outputs in
 * a column, which isolates activation-outlier input channels), measure the
 * calibration output error of each, tr(dW H dW^T) = 2/N sum ||W x - Q x||^2,
 * and keep the better. On top of RTN or GPTQ. A group size that does not
 * divide one of the two axes leaves that candidate out. */
#include "methods.h"

#include <math.h>
#include <string.h>

static int adadim(wmat_qresult *out, const float *W, int64_t rows, int64_t cols, const wmat_qstats *st,
                  const wmat_qparams *p, wmat_qmethod_info *info, wmat_qmethod_fn base, const char *name)
{
    memset(out, 0, sizeof *out);
    if (!st || !st->H || st->n != cols)
        return wmat_set_error(WMAT_ERR_INVALID, "%s needs the Hessian of the layer's %lld inputs (calibration data)",
                              name, (long long)cols);
    wmat_qparams pin = *p, pout = *p;
    pin.axis = WMAT_QAXIS_IN;
    pout.axis = WMAT_QAXIS_OUT;
    const int ok_in = !(p->group > 0 && cols % p->group), ok_out = !(p->group > 0 && rows % p->group);
    if (!ok_in && !ok_out) {
        int g;
        return wmat__qgroup(&pin, rows, cols, &g);
    }
    wmat_qresult qin, qout;
    wmat_qmethod_info iin, iout;
    memset(&qin, 0, sizeof qin);
    memset(&qout, 0, sizeof qout);
    float *Wq = wmat__malloc((size_t)(rows * cols) * sizeof(float));
    double ein = INFINITY, eout = INFINITY;
    int rc = WMAT_OK;
    if (!Wq) return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", name);
    if (ok_in) {
        if ((rc = base(&qin, W, rows, cols, st, &pin, &iin))) goto done;
        wmat_qresult_dequant(&qin, Wq);
        ein = wmat__qoutput_error(W, Wq, rows, cols, st->H);
    }
    if (ok_out) {
        if ((rc = base(&qout, W, rows, cols, st, &pout, &iout))) goto done;
        wmat_qresult_dequant(&qout, Wq);
        eout = wmat__qoutput_error(W, Wq, rows, cols, st->H);
    }
    if (isnan(ein) || isnan(eout)) {
        rc = wmat_set_error(WMAT_ERR_NUMERIC, "%s: output error is not a number", name);
        goto done;
    }
    const int ic = eout < ein;
    *out = ic ? qout : qin;
    if (ic) memset(&qout, 0, sizeof qout);
    else memset(&qin, 0, sizeof qin);
    if (info) {
        *info = ic ? iout : iin;
        info->chose_ic = ic;
        info->err_in = ein;
        info->err_out = eout;
        char tmp[sizeof info->scheme];
        memcpy(tmp, info->scheme, sizeof tmp);
        snprintf(info->scheme, sizeof info->scheme, "%s: %.80s", name, tmp);
    }
done:
    wmat_qresult_free(&qin);
    wmat_qresult_free(&qout);
    wmat__free(Wq);
    return rc;
}

int wmat__quant_adadim_rtn(wmat_qresult *out, const float *W, int64_t rows, int64_t cols, const wmat_qstats *st,
                           const wmat_qparams *p, wmat_qmethod_info *info)
{
    return adadim(out, W, rows, cols, st, p, info, wmat__quant_rtn, "adadim");
}

int wmat__quant_adadim_gptq(wmat_qresult *out, const float *W, int64_t rows, int64_t cols, const wmat_qstats *st,
                            const wmat_qparams *p, wmat_qmethod_info *info)
{
    return adadim(out, W, rows, cols, st, p, info, wmat__quant_gptq, "adadim");
}
